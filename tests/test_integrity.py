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
        PreparedData(data).global_tokenizer_path
    meta = data / "sources" / "en" / "meta.json"
    meta.write_text(meta.read_text().replace('"documents": ', '"documents": 1'))
    with pytest.raises(DataError, match="en/meta.json: does not match its checksum"):
        PreparedData(data).source("en")
    meta.write_text("{")
    with pytest.raises(DataError, match=r"en/meta.json: .*damaged"):
        PreparedData(data).source("en")
