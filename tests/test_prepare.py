"""Reading sources, the document-hash split, shards, TRIM vocabularies and skipping unchanged sources."""

import json

import numpy as np
import pytest
from conftest import make_config, write_corpus

from dept.config import SourceConfig
from dept.data.documents import is_validation, read_source
from dept.data.prepare import prepare
from dept.data.prepared import PreparedData
from dept.data.tokenizer import load_tokenizer
from dept.errors import DataError


def test_prepared_meta_counts_and_trim_vocab(prepared_root):
    data = PreparedData(prepared_root / "prepared")
    docs = [json.loads(line)["text"] for line in (prepared_root / "corpus" / "en.jsonl").read_text().splitlines()]
    src = data.source("en")
    meta = src.meta["splits"]
    assert meta["train"]["documents"] + meta["val"]["documents"] == len(docs)
    assert meta["val"]["documents"] == sum(is_validation(d, 0.1) for d in docs)
    assert meta["train"]["bytes"] + meta["val"]["bytes"] == sum(len(d.encode()) for d in docs)
    train = src.tokens("global", "train")
    assert train.dtype == np.uint16 and len(train) == meta["train"]["tokens"]["global"]
    assert np.array_equal(src.trim_vocab(), np.unique(np.asarray(train)))
    # Byte-level tokenizers: the byte lengths of the val tokens add up to the val text's bytes.
    for vocab, lengths in (("global", data.global_byte_lengths), ("own", data.own_byte_lengths("en"))):
        assert lengths[np.asarray(src.tokens(vocab, "val"))].sum() == meta["val"]["bytes"]
    own = load_tokenizer(src.own_tokenizer_path())
    assert own.get_vocab_size() == src.vocab_size("own") <= 320


def test_split_is_deterministic_by_document(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(f"document number {i}" for i in range(400)))
    src = SourceConfig(name="a", files=["a.txt"], delimiter="\n\n")
    one = read_source(src, tmp_path, 0.1, 1)
    (tmp_path / "a.txt").write_text("\n\n".join(f"document number {i}" for i in reversed(range(400))))
    two = read_source(src, tmp_path, 0.1, 1)
    assert sorted(one.val) == sorted(two.val) and 20 < len(one.val) < 60


def test_skips_unchanged_and_redoes_changed_sources(tmp_path):
    write_corpus(tmp_path / "corpus", docs_per_source=30)
    cfg = make_config(tmp_path)
    lines = []
    first = prepare(cfg, log=lines.append)
    assert sorted(first.prepared) == ["code", "en", "fr", "ru"]
    # Tokenizer training can take minutes: a line says what is trained, and on how much, before it starts. The
    # global mixture is sample_chars (20M) of ASCII text; a source's own sample is its whole (small) train split.
    glob = next(i for i, line in enumerate(lines) if line.startswith("training the global bpe tokenizer"))
    assert lines[glob].startswith("training the global bpe tokenizer (400 tokens,")
    assert lines[glob].endswith(" on 20.00 MB")
    data = PreparedData(tmp_path / "prepared")
    for name in ("code", "en", "fr", "ru"):
        train_mb = data.source(name).meta["splits"]["train"]["bytes"] / 1e6
        said = lines.index(f"  {name}: training its bpe tokenizer (320 tokens) on {train_mb:.2f} MB")
        assert glob < said < next(i for i, line in enumerate(lines) if line.startswith(f"  {name}: ") and
                                  "train /" in line)
    again = prepare(cfg, log=lambda *_: None)
    assert again.prepared == [] and sorted(again.skipped) == ["code", "en", "fr", "ru"]
    # An unseen source's change does not touch the global tokenizer: only it is redone.
    with open(tmp_path / "corpus" / "ru.jsonl", "a") as f:
        f.write(json.dumps({"text": "новый документ " * 30}) + "\n")
    third = prepare(cfg, log=lambda *_: None)
    assert third.prepared == ["ru"]
    # A trained source's change retrains the global tokenizer, so every source is re-encoded.
    with open(tmp_path / "corpus" / "en.jsonl", "a") as f:
        f.write(json.dumps({"text": "a new document " * 30}) + "\n")
    assert sorted(prepare(cfg, log=lambda *_: None).prepared) == ["code", "en", "fr", "ru"]


def test_text_markdown_and_delimiters(tmp_path):
    (tmp_path / "a.md").write_text("# one\n\n---\n\ntwo")
    (tmp_path / "b.txt").write_text("three")
    src = SourceConfig(name="s", files=["*.md", "*.txt"], delimiter="---")
    docs = read_source(src, tmp_path, 0.5, 1)
    assert sorted(docs.train + docs.val) == ["# one", "three", "two"]  # edge newlines stripped


def test_bom_crlf_and_a_single_file_string_are_read_as_meant(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + b'{"text": "first"}\r\n{"text": "second"}\r\n')
    (tmp_path / "b.txt").write_bytes(b"one\r\nline\r\n\r\ntwo\r\n\r\nthree")
    docs = read_source(SourceConfig(name="j", files="a.jsonl"), tmp_path, 0.5, 1)  # files: one string
    assert sorted(docs.train + docs.val) == ["first", "second"]
    docs = read_source(SourceConfig(name="t", files=["b.txt"], delimiter="\n\n"), tmp_path, 0.5, 1)
    assert sorted(docs.train + docs.val) == ["one\nline", "three", "two"]


@pytest.mark.parametrize("delimiter,hint", [(None, "set `delimiter` to split it"),
                                            ("@@@", "delimiter '@@@' never occurs in them")])
def test_a_text_source_of_one_document_says_why(tmp_path, delimiter, hint):
    (tmp_path / "a.txt").write_text("para one\n\npara two\n")
    with pytest.raises(DataError) as err:
        read_source(SourceConfig(name="s", files=["a.txt"], delimiter=delimiter), tmp_path, 0.1, 1)
    assert "only 1 document(s)" in str(err.value) and hint in str(err.value)


def test_parquet_source(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": [f"doc {i}" for i in range(50)]}), tmp_path / "d.parquet")
    docs = read_source(SourceConfig(name="p", files=["d.parquet"], text_field="content"), tmp_path, 0.2, 1)
    assert len(docs.train) + len(docs.val) == 50


def test_hf_dataset_on_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(30)]}).save_to_disk(str(tmp_path / "ds"))
    docs = read_source(SourceConfig(name="h", hf_dataset="ds"), tmp_path, 0.2, 1)
    assert len(docs.train) + len(docs.val) == 30


@pytest.mark.parametrize("setup,message", [
    (lambda p: (p / "a.txt").write_bytes(b"ok \xff\xfe bad"), "a.txt: not valid UTF-8 at byte 3"),
    (lambda p: (p / "a.jsonl").write_text('{"text": "x"}\n{bad\n'), "a.jsonl:2: invalid JSON"),
    (lambda p: (p / "a.jsonl").write_text('{"body": "x"}\n'), "a.jsonl:1: no 'text' field"),
    (lambda p: (p / "a.txt").write_text(""), "no documents"),
    (lambda p: None, "no file matches"),
    (lambda p: (p / "a.csv").write_text("x"), "unsupported file type"),
])
def test_bad_inputs_name_the_file(tmp_path, setup, message):
    setup(tmp_path)
    pattern = "a.*"
    with pytest.raises(DataError) as err:
        read_source(SourceConfig(name="s", files=[pattern]), tmp_path, 0.1, 1)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_site_prepares_its_own_source_with_the_shared_global_tokenizer(prepared_root, tmp_path):
    """A federation's site holds one source: with the shared global tokenizer its global ids are everyone's."""
    import numpy as np
    from conftest import make_config

    from dept.data.prepared import PreparedData
    from dept.errors import DataError

    shared = prepared_root / "prepared" / "global_tokenizer.json"
    site = make_config(prepared_root, {"data.dir": str(tmp_path / "site"), "data.tokenizer.global.path": str(shared)})
    site.data.sources = [s for s in site.data.sources if s.name == "fr"]
    prepare(site, log=lambda *_: None)
    mine, everyone = PreparedData(tmp_path / "site"), PreparedData(prepared_root / "prepared")
    assert mine.global_vocab_size == everyone.global_vocab_size
    for split in ("train", "val"):
        assert np.array_equal(mine.source("fr").tokens("global", split), everyone.source("fr").tokens("global", split))
    assert np.array_equal(mine.source("fr").trim_vocab(), everyone.source("fr").trim_vocab())

    (tmp_path / "bad.json").write_text("{}")
    bad = make_config(prepared_root, {"data.dir": str(tmp_path / "bad"),
                                      "data.tokenizer.global.path": str(tmp_path / "bad.json")})
    with pytest.raises(DataError, match="is not a tokenizer.json"):
        prepare(bad, log=lambda *_: None)
    assert not (tmp_path / "bad").exists()
