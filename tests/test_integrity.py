"""Every file dept later trusts is checksummed and verified before use: prepared shards and tokenizers, each
source's meta; a damaged one is named in one line, and `dept prepare` rewrites it."""

import json
import shutil

import pytest

from dept.data.integrity import damaged
from dept.data.prepare import prepare
from dept.data.prepared import PreparedData
from dept.errors import DataError


@pytest.fixture
def data_copy(prepared_root, tmp_path):
    """The session's prepared data, copied (it is damaged here), with the config that prepared it."""
    from conftest import make_config

    root = tmp_path / "root"
    shutil.copytree(prepared_root / "prepared", root / "prepared")
    cfg = make_config(prepared_root, {"data.dir": str(root / "prepared")})
    return cfg, root / "prepared"


def flip_one_bit(path, at=-1):
    data = bytearray(path.read_bytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))


def test_prepare_records_a_checksum_of_every_file_it_writes(data_copy):
    _, data = data_copy
    manifest = json.loads((data / "manifest.json").read_text())
    assert set(manifest["files"]) == {"global_tokenizer.json"} | {f"sources/{n}/meta.json"
                                                                  for n in manifest["sources"]}
    for name in manifest["sources"]:
        meta = json.loads((data / "sources" / name / "meta.json").read_text())
        on_disk = {str(p.relative_to(data / "sources" / name)) for p in (data / "sources" / name).rglob("*")
                   if p.is_file() and p.name != "meta.json"}
        assert set(meta["files"]) == on_disk and len(on_disk) == 6  # 4 shards, tokenizer, TRIM vocabulary
        assert damaged(data / "sources" / name, meta["files"]) == []
    assert damaged(data, manifest["files"]) == []


@pytest.mark.parametrize("name", ["global/train.bin", "own/val.bin", "tokenizer.json", "trim_vocab.npy"])
def test_a_damaged_source_file_is_named_and_prepare_rewrites_it(data_copy, name):
    cfg, data = data_copy
    path = data / "sources" / "fr" / name
    before = path.read_bytes()
    flip_one_bit(path)
    source = PreparedData(data).source("fr")
    with pytest.raises(DataError, match=rf"{path}: does not match its checksum \(damaged\): run `dept prepare`"):
        source.file(name)
    report = prepare(cfg, log=lambda *_: None)
    assert report.prepared == ["fr"]  # the others were verified and kept
    assert path.read_bytes() == before  # the same bytes as first written


def test_a_damaged_global_tokenizer_or_meta_is_refused(data_copy):
    _, data = data_copy
    flip_one_bit(data / "global_tokenizer.json", at=100)
    with pytest.raises(DataError, match="global_tokenizer.json: does not match its checksum"):
        _ = PreparedData(data).global_tokenizer_path
    meta = data / "sources" / "en" / "meta.json"
    meta.write_text(meta.read_text().replace('"documents": ', '"documents": 1'))
    with pytest.raises(DataError, match="en/meta.json: does not match its checksum"):
        PreparedData(data).source("en")
    meta.write_text("{")
    with pytest.raises(DataError, match=r"en/meta.json: .*damaged"):
        PreparedData(data).source("en")


class Crash(RuntimeError):
    pass


def crashed_run(cfg, crash_round):
    from dept.training import Trainer

    trainer = Trainer(cfg, log=lambda *_: None)
    inner = trainer.engine.run_round

    def run_round(assignments):
        if assignments[0].plan.round == crash_round:
            raise Crash
        return inner(assignments)

    trainer.engine.run_round = run_round
    with pytest.raises(Crash):
        trainer.train()


@pytest.mark.parametrize("damage", ["cut", "garbled", "deleted"])
def test_metrics_up_to_the_last_checkpoint_are_restored_on_resume(tiny, tmp_path, damage):
    from dept.training import Trainer

    straight = tiny(variant="spec_opt", rounds=4, overrides={"run.dir": str(tmp_path / "a"), "eval.every": 1})
    Trainer(straight, log=lambda *_: None).train()
    cfg = tiny(variant="spec_opt", rounds=4, overrides={"run.dir": str(tmp_path / "b"), "eval.every": 1})
    crashed_run(cfg, crash_round=3)
    path = cfg.run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 6  # rounds 1-3, each with its evaluation
    if damage == "cut":
        path.write_text("".join(lines[:2]) + lines[2][:20])  # a file system that lost the tail of the file
    elif damage == "garbled":
        path.write_bytes(b"".join(x.encode() for x in lines[:3]) + b"\x00\xff garbage\n" + lines[4].encode())
    else:
        path.unlink()
    notes = []
    Trainer(cfg, log=notes.append).train(resume=True)
    assert any(f"{path}: its lines up to round 3 were damaged or missing; restored from" in n for n in notes)
    strip = [{k: v for k, v in json.loads(x).items() if k not in ("elapsed_s", "train_s")}
             for x in path.read_text().splitlines()]
    want = [{k: v for k, v in json.loads(x).items() if k not in ("elapsed_s", "train_s")}
            for x in (straight.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert strip == want  # one line per round and per evaluation, as in the run never stopped
