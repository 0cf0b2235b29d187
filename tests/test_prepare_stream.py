"""Streaming `dept prepare`: chunked encoding and sharded output give the tokens of one pass; windows across shard
boundaries; compressed inputs; a SIGKILL mid-source resumed to the same bytes; damaged shards and bad compressed
files named in one line."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_config, tiny_tree, write_corpus

from dept import failpoints
from dept.config import SourceConfig
from dept.data import documents
from dept.data.documents import read_source
from dept.data.prepare import prepare
from dept.data.prepared import PreparedData, ShardedTokens
from dept.data.stream import WindowStream
from dept.data.tokenizer import balanced_mixture
from dept.errors import DataError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "campaigns"))
from kill import dept as run_dept  # noqa: E402
from kill import differences  # noqa: E402

FAST = {"data.tokenizer.global.sample_chars": 30_000, "data.tokenizer.per_source.sample_chars": 20_000}
SOURCES = ("en", "fr", "code", "ru")


def config(root: Path, data_dir: str, **overrides):
    return make_config(root, {**FAST, "data.dir": str(root / data_dir), **overrides})


def quiet(cfg, lines: list[str] | None = None):
    return prepare(cfg, log=(lines.append if lines is not None else lambda *_: None))


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".dept.lock"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The test corpus, prepared in one chunk and one shard per split, and again in small chunks and shards."""
    root = tmp_path_factory.mktemp("stream")
    write_corpus(root / "corpus", docs_per_source=40, words_per_doc=80)
    quiet(config(root, "whole"))
    quiet(config(root, "sharded", **{"data.shard_tokens": 300, "data.chunk_chars": 3000}))
    return root


def expected_shard_sizes(stream: np.ndarray, shard_tokens: int) -> list[int]:
    """The rule, from the whole stream: a shard ends after the first document that brings it to shard_tokens,
    if another document follows."""
    ends = np.flatnonzero(stream == 0)[1:] + 1  # each document's end, after its EOS
    sizes, start = [], 0
    for k, end in enumerate(ends):
        if end - start >= shard_tokens and k + 1 < len(ends):
            sizes.append(int(end - start))
            start = end
    return sizes + [int(len(stream) - start)]


def test_shards_and_chunks_hold_the_tokens_of_one_pass(corpus):
    whole, sharded = PreparedData(corpus / "whole"), PreparedData(corpus / "sharded")
    assert files_of(corpus / "whole")["global_tokenizer.json"] == files_of(corpus / "sharded")["global_tokenizer.json"]
    for name in SOURCES:
        a, b = whole.source(name), sharded.source(name)
        assert a.own_tokenizer_path().read_bytes() == b.own_tokenizer_path().read_bytes()
        assert np.array_equal(a.trim_vocab(), b.trim_vocab())
        for split in ("train", "val"):
            one = np.asarray(a.tokens("global", split))
            shards = b.meta["splits"][split]["shards"]
            assert [s["tokens"]["global"] for s in shards] == expected_shard_sizes(one, 300)
            for vocab in ("global", "own"):
                got = b.tokens(vocab, split)
                assert np.array_equal(np.asarray(got), np.asarray(a.tokens(vocab, split)))
                assert len(got) == b.n_tokens(vocab, split) == a.n_tokens(vocab, split)
    train = sharded.source("en").meta["splits"]["train"]["shards"]
    assert len(train) == 9 and [s["files"]["own"] for s in train[:2]] == ["own/train.00000.bin", "own/train.00001.bin"]
    assert sharded.source("en").meta["splits"]["val"]["shards"][0]["files"]["global"] == "global/val.bin"  # one
    assert [s["documents"] for s in sharded.source("code").meta["splits"]["val"]["shards"]] == [4, 1]


def test_chunk_size_changes_no_byte(corpus, tmp_path):
    """Encoding 300 characters at a time or 3,000 writes the same files (shards, tokenizers, meta, manifest)."""
    quiet(config(corpus, str(tmp_path / "small"), **{"data.shard_tokens": 300, "data.chunk_chars": 300}))
    a, b = files_of(corpus / "sharded"), files_of(tmp_path / "small")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def test_windows_across_shard_boundaries_read_the_right_tokens(corpus):
    one = np.asarray(PreparedData(corpus / "whole").source("fr").tokens("own", "train"))
    many = PreparedData(corpus / "sharded").source("fr").tokens("own", "train")
    assert isinstance(many, ShardedTokens) and len(many.paths) == 10
    for b in many.starts[1:-1]:
        assert np.array_equal(many[b - 3:b + 4], one[b - 3:b + 4]) and many[b] == one[b] and many[b - 1] == one[b - 1]
    for key in (slice(None), slice(-9, None), slice(5, 3000, 7), slice(None, None, -5), slice(10, 10)):
        assert np.array_equal(many[key], one[key]), key
    assert many[-1] == one[-1] == 0 and many.shape == one.shape
    with pytest.raises(IndexError):
        many[len(one)]
    a = WindowStream(one, seq_len=40, batch_size=4, seed=3, stream_id=1, name="fr")
    b = WindowStream(many, seq_len=40, batch_size=4, seed=3, stream_id=1, name="fr")
    for _ in range(2 * a.n_windows // 4):  # two epochs: every window, several across boundaries
        assert np.array_equal(a.next_batch().numpy(), b.next_batch().numpy())


def test_compressed_inputs_prepare_like_plain_jsonl(corpus, tmp_path):
    zstandard = pytest.importorskip("zstandard")
    (tmp_path / "corpus").mkdir()
    for name in SOURCES:
        data = (corpus / "corpus" / f"{name}.jsonl").read_bytes()
        if name == "fr":
            (tmp_path / "corpus" / "fr.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
        else:
            (tmp_path / "corpus" / f"{name}.jsonl.gz").write_bytes(gzip.compress(data))
    cfg = config(tmp_path, "prepared")
    for src in cfg.data.sources:
        src.files = [str(tmp_path / "corpus" / f"{src.name}.jsonl.{'zst' if src.name == 'fr' else 'gz'}")]
    quiet(cfg)
    a, b = files_of(corpus / "whole"), files_of(tmp_path / "prepared")
    tokens = [k for k in a if k.endswith((".bin", ".npy", "tokenizer.json"))]
    assert len(tokens) == 1 + 4 * 6 and all(a[k] == b[k] for k in tokens)


def test_a_gzipped_text_file_splits_as_the_plain_one(tmp_path):
    text = "one\r\nline\r\n\r\ntwo\r\n\r\nthree"
    (tmp_path / "a.txt").write_text(text, newline="")
    (tmp_path / "b.md.gz").write_bytes(gzip.compress(text.encode()))
    plain = read_source(SourceConfig(name="t", files=["a.txt"], delimiter="\n\n"), tmp_path, 0.5, 1)
    packed = read_source(SourceConfig(name="t", files=["b.md.gz"], delimiter="\n\n"), tmp_path, 0.5, 1)
    assert plain == packed and sorted(plain.train + plain.val) == ["one\nline", "three", "two"]


def test_text_read_in_small_blocks_splits_as_read_whole(tmp_path, monkeypatch):
    """Blocks of 1-5 bytes cut CRLFs, multi-byte characters, a BOM and delimiters: the documents are the same."""
    import random

    rng = random.Random(0)
    pieces = ["a", "é", "日", "\r", "\n", "\r\n", "--", "-", " ", "😀"]
    for trial in range(60):
        text = ("\ufeff" if trial % 3 == 0 else "") + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        path = tmp_path / "t.txt"
        path.write_bytes(text.encode())
        want = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
        for delimiter in (None, "--", "\n\n"):
            monkeypatch.setattr(documents, "_BLOCK", rng.randint(1, 5))
            got = list(documents.iter_input(SourceConfig(name="t", files=["t.txt"], delimiter=delimiter),
                                            tmp_path, path))
            assert got == ([want] if delimiter is None else want.split(delimiter)), (text, delimiter)
    monkeypatch.setattr(documents, "_BLOCK", 2)
    (tmp_path / "a.txt").write_bytes(b"ok \xc3\xa9 \xff bad")  # the bad byte is the 7th; blocks of 2 bytes
    with pytest.raises(DataError, match=r"a.txt: not valid UTF-8 at byte 6$"):
        read_source(SourceConfig(name="s", files=["a.txt"]), tmp_path, 0.1, 1)


@pytest.mark.parametrize("name,content,message", [
    ("a.jsonl.gz", b"not gzip at all", r"a.jsonl.gz: not a readable gzip file \(Not a gzipped file"),
    ("a.jsonl.gz", gzip.compress(b'{"text": "x"}\n' * 500)[:60], r"a.jsonl.gz: not a readable gzip file"),
    ("a.jsonl.gz", gzip.compress(b'{"text": "x"}\n{bad\n'), r"a.jsonl.gz:2: invalid JSON"),
    ("a.jsonl.gz", b"", r"a.jsonl.gz: not a readable gzip file \(it is empty\)"),
    ("a.jsonl.zst", b"garbage", r"a.jsonl.zst: not a readable zstd file"),
    ("a.jsonl.zst", None, r"a.jsonl.zst: not a readable zstd file \(it ends inside a frame"),
    ("a.csv.gz", b"x", r"unsupported file type '.csv.gz'"),
])
def test_bad_compressed_inputs_name_the_file(tmp_path, name, content, message):
    if name.endswith(".zst"):
        zstandard = pytest.importorskip("zstandard")
        if content is None:  # cut inside its frame
            content = zstandard.ZstdCompressor().compress(b'{"text": "a document"}\n' * 2000)[:-10]
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_source(SourceConfig(name="s", files=[name]), tmp_path, 0.1, 1)
    assert "\n" not in str(err.value)


def test_zst_without_zstandard_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_zstd(name, *args, **kwargs):
        if name == "zstandard":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_zstd)
    (tmp_path / "a.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(DataError, match=r"a.jsonl.zst: reading .zst needs the zstandard package "
                                        r"\(pip install 'dept\[zstd\]'\)$"):
        read_source(SourceConfig(name="s", files=["a.jsonl.zst"]), tmp_path, 0.1, 1)


def test_parquet_is_read_in_batches(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    monkeypatch.setattr(documents, "_BATCH_ROWS", 7)
    texts = [f"document {i}" for i in range(30)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "d.parquet", row_group_size=8)
    assert list(documents.iter_documents(SourceConfig(name="p", files=["d.parquet"]), tmp_path)) == texts
    pq.write_table(pa.table({"text": texts[:20] + [None] + texts[21:]}), tmp_path / "d.parquet", row_group_size=8)
    with pytest.raises(DataError, match=r"d.parquet: row 20: column 'text' is not a string"):
        list(documents.iter_documents(SourceConfig(name="p", files=["d.parquet"]), tmp_path))


def test_the_global_sample_reads_each_source_when_its_turn_comes():
    """Shares follow the true sizes; a source's documents (its leading ones) are read once, and not at all when
    its share of the sample is empty."""
    calls = []

    def source(name, docs):
        return lambda: calls.append(name) or docs

    big = [f"{i:04d}" * 25 for i in range(40)]  # the leading 4,000 characters of a source of 10^6
    mix = list(balanced_mixture([source("big", big), source("small", ["tiny"])], 2000, 1.0, 0, [10**6, 4]))
    assert calls == ["big"] and sum(map(len, mix)) == 1999 and set(mix[:-1]) <= set(big)


def write_yaml(root: Path, data_dir: Path, **overrides) -> Path:
    tree = tiny_tree(root)
    tree["data"]["dir"] = str(data_dir)
    for dotted, value in {**FAST, **overrides}.items():
        node = tree
        *head, last = dotted.split(".")
        for k in head:
            node = node[k]
        node[last] = value
    path = data_dir.parent / f"{data_dir.name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_killed_prepare_resumes_from_its_last_shard(corpus, tmp_path):
    """A SIGKILL inside the first source's fourth shard; run again, it verifies the three written, encodes from
    there, and ends with every byte of a prepare never stopped."""
    cfg_path = write_yaml(corpus, tmp_path / "data", **{"data.shard_tokens": 300})
    # writes: the global tokenizer, its record, en's tokenizer and progress, then 3 per shard (2 files, progress)
    assert run_dept("prepare", str(cfg_path), kill_at="write:15") == -9
    partial = tmp_path / "data" / "partial" / "en"
    progress = json.loads((partial / "progress.json").read_text())
    shards = progress["splits"]["train"]["shards"] + progress["splits"]["val"]["shards"]
    assert len(shards) == 3 and not (tmp_path / "data" / "manifest.json").exists()
    from dept.doctor import doctor

    said = {(f.level, f.path.name): f.text for f in doctor(tmp_path / "data")}
    assert said[("note", "en")].endswith("running it again resumes from its last complete shard")
    assert said[("PROBLEM", "manifest.json")].startswith("missing: a `dept prepare` stopped before it finished")
    out = subprocess.run([sys.executable, "-m", "dept", "prepare", str(cfg_path)], capture_output=True, text=True,
                         check=True).stdout
    assert "training the global" not in out and "en: training its" not in out  # both tokenizers kept
    done = sum(s["documents"] for s in shards)
    assert f"en: resuming a stopped prepare after 3 train and 0 val shard(s) ({done} documents)" in out
    assert differences(corpus / "sharded", tmp_path / "data") == []


def test_a_stopped_prepare_with_other_settings_is_started_again(corpus, tmp_path):
    """A partial source made with another shard size or vocabulary is deleted, not resumed."""
    failpoints.arm(fail="write:12:EIO")  # a disk error inside en's third shard
    with pytest.raises(OSError):
        quiet(config(corpus, str(tmp_path / "data"), **{"data.shard_tokens": 500}))
    failpoints.arm()
    assert (tmp_path / "data" / "partial" / "en" / "progress.json").is_file()
    assert not list((tmp_path / "data").rglob("*.tmp"))
    lines = []
    quiet(config(corpus, str(tmp_path / "data"), **{"data.shard_tokens": 300}), lines)
    assert not any("resuming" in line for line in lines)
    assert any(line.startswith("  en: training its bpe tokenizer") for line in lines)
    assert differences(corpus / "sharded", tmp_path / "data") == []


def test_a_damaged_shard_is_named_and_prepare_rewrites_it(corpus, tmp_path):
    shutil.copytree(corpus / "sharded", tmp_path / "data")
    path = tmp_path / "data" / "sources" / "code" / "global" / "train.00002.bin"
    before = path.read_bytes()
    path.write_bytes(before[:-2] + bytes([before[-2] ^ 1]) + before[-1:])
    with pytest.raises(DataError) as err:
        PreparedData(tmp_path / "data").source("code").tokens("global", "train")
    assert str(err.value) == (f"{path}: does not match its checksum (damaged): run `dept prepare` again, it "
                              "rewrites damaged sources")
    from dept.doctor import doctor

    problems = [f.line() for f in doctor(tmp_path / "data") if f.level == "PROBLEM"]
    assert problems == [f"PROBLEM {path.parents[1]}: missing or damaged: global/train.00002.bin: run `dept "
                        "prepare` again (it rewrites this source)"]
    report = quiet(config(corpus, str(tmp_path / "data"), **{"data.shard_tokens": 300}))
    assert report.prepared == ["code"] and path.read_bytes() == before


def test_the_held_out_document_and_an_empty_train_split_stream_as_before(corpus, tmp_path):
    """No document hashes into validation: the last train document is the validation split. An unseen source of
    one document: its train split is the leading EOS alone, and its own tokenizer trains on its one document."""
    from dept.data.tokenizer import encode_stream, load_tokenizer

    cfg = config(corpus, str(tmp_path / "data"), **{"data.val_fraction": 1e-9, "data.shard_tokens": 300})
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": "один документ " * 20}) + "\n")
    cfg.data.sources[3].files = [str(tmp_path / "one.jsonl")]
    quiet(cfg)
    data = PreparedData(tmp_path / "data")
    for src in cfg.data.sources:
        docs = read_source(src, Path(cfg.base_dir), cfg.data.val_fraction, cfg.data.min_doc_chars)
        assert len(docs.val) == 1 and docs.val[0] == docs.val[-1]
        own = load_tokenizer(data.source(src.name).own_tokenizer_path())
        for split, texts in (("train", docs.train), ("val", docs.val)):
            assert np.array_equal(np.asarray(data.source(src.name).tokens("own", split)), encode_stream(own, texts))
    assert len(data.source("ru").tokens("global", "train")) == 1 and data.source("ru").meta["splits"]["train"][
        "documents"] == 0
