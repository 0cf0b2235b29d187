"""Shared fixtures: a tiny multi-source corpus on disk, prepared once per session, and small configs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dept.config import Config, config_from_dict
from dept.data.prepare import prepare

WORDS = {
    "en": "the of and to in is was that for it with as his on be at by this had not are but from".split(),
    "fr": "le la les de des et en un une est que qui dans pour pas sur au avec il elle nous vous".split(),
    "ru": "и в не на что я с он как это по но они к у же вы за бы от".split(),
    "code": ["def", "return", "if", "else:", "for", "in", "range(", ")", "x", "y", "=", "+", "\n    ", "import"],
}


def write_corpus(root: Path, docs_per_source: int = 60, words_per_doc: int = 120) -> None:
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for name, words in WORDS.items():
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(docs_per_source):
                text = " ".join(rng.choice(words) for _ in range(words_per_doc))
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def tiny_tree(root: Path, **train) -> dict:
    return {
        "run": {"dir": str(root / "run"), "seed": 0},
        "data": {
            "dir": str(root / "prepared"),
            "val_fraction": 0.1,
            "sources": [
                {"name": "en", "files": [str(root / "corpus" / "en.jsonl")]},
                {"name": "fr", "files": [str(root / "corpus" / "fr.jsonl")]},
                {"name": "code", "files": [str(root / "corpus" / "code.jsonl")]},
                {"name": "ru", "files": [str(root / "corpus" / "ru.jsonl")], "unseen": True},
            ],
            "tokenizer": {"global": {"vocab_size": 400}, "per_source": {"vocab_size": 320}},
        },
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 64},
        "train": {"variant": "spec_opt", "rounds": 3, "local_steps": 3, "batch_size": 2, "seq_len": 16,
                  "sources_per_round": 2, "inner": {"warmup_steps": 2}, **train},
        "eval": {"max_bytes": 1024, "batch_size": 8},
    }


def make_config(root: Path, overrides: dict | None = None, **train) -> Config:
    tree = tiny_tree(root, **train)
    for dotted, value in (overrides or {}).items():
        node = tree
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return config_from_dict(tree, "test", base_dir=root)


@pytest.fixture(scope="session")
def prepared_root(tmp_path_factory) -> Path:
    """A corpus of four sources (one unseen), prepared once for the whole session."""
    root = tmp_path_factory.mktemp("dept")
    write_corpus(root / "corpus")
    prepare(make_config(root), log=lambda *_: None)
    return root


@pytest.fixture
def tiny(prepared_root, tmp_path):
    """Make a config on the shared prepared data with its own run folder."""

    def factory(overrides: dict | None = None, **train) -> Config:
        overrides = {"run.dir": str(tmp_path / "run"), **(overrides or {})}
        return make_config(prepared_root, overrides, **train)

    return factory


@pytest.fixture
def one_thread():
    """Tiny models: one thread is fastest, and stays fast on a busy machine (use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
