"""The paper's method exactly: SPEC's table and scoring, STD without an outer optimizer, the same validation text for
every variant, and no reserved source name."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_config, write_corpus

from dept.algorithm.source_store import SourceStore
from dept.checkpoint import latest_checkpoint, load_checkpoint
from dept.data.documents import read_source
from dept.data.prepare import prepare
from dept.data.prepared import GLOBAL, PreparedData, PreparedSource
from dept.training import Trainer


def quiet(*_):
    pass


def round_records(cfg):
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "round"]


def test_spec_table_holds_only_the_sources_vocabulary(tiny):
    cfg = tiny(variant="spec", rounds=2, sources_per_round=3)
    results = Trainer(cfg, log=quiet).train()
    data = PreparedData(cfg.data_dir)
    store = SourceStore(cfg.run_dir / "sources")
    for s in cfg.trained_sources:
        held = data.source(s.name).trim_vocab()
        assert held.size < data.global_vocab_size
        assert store.load(s.name, 2).embedding["tokens"].shape == (held.size, cfg.model.d_model)
    for r in results:  # evaluated with those rows (unseen sources too: a fresh table of their V_k)
        assert r.vocab_size == data.source(r.source).trim_vocab().size
    record = round_records(cfg)[0]
    for name, held in record["embedding_params_held"].items():
        assert held == data.source(name).trim_vocab().size * cfg.model.d_model


def test_tokens_outside_the_table_are_scored_by_the_escape_rule_in_evaluation(tiny, monkeypatch):
    """Take the three commonest validation tokens of 'en' out of its TRIM rows: they are still scored (at the
    escape cost) and their bytes still count; the loss moves with ε exactly as the rule says."""
    cfg = tiny(variant="trim", rounds=1, sources_per_round=3, overrides={"eval.max_bytes": 4096})
    Trainer(cfg, log=quiet).train()
    shared, _ = load_checkpoint(latest_checkpoint(cfg.run_dir))
    data = PreparedData(cfg.data_dir)
    val = np.asarray(data.source("en").tokens(GLOBAL, "val"))
    counts = np.bincount(val, minlength=data.global_vocab_size)
    counts[0] = 0
    removed = np.argsort(counts)[-3:]
    original = PreparedSource.trim_vocab

    def without_removed(self):
        ids = original(self)
        return ids[~np.isin(ids, removed)] if self.name == "en" else ids

    def evaluate(eps):
        cfg.eval.escape_probability = eps
        return {r.source: r for r in Trainer(cfg, log=quiet).evaluate(shared, 0, record=False)}

    full = evaluate(1e-4)["en"]
    monkeypatch.setattr(PreparedSource, "trim_vocab", without_removed)
    a, b = evaluate(1e-4)["en"], evaluate(1e-2)["en"]
    assert a.oov_tokens > 0 and a.oov_tokens == b.oov_tokens
    assert a.bytes == b.bytes == full.bytes and a.tokens == full.tokens  # never dropped
    assert a.vocab_size == full.vocab_size - 3
    held = a.tokens - a.oov_tokens
    expected = held * (math.log1p(-1e-4) - math.log1p(-1e-2)) + a.oov_tokens * (math.log(1e-4) - math.log(1e-2))
    assert (a.loss - b.loss) * a.tokens == pytest.approx(-expected, rel=1e-6)


@pytest.mark.parametrize("variant", ["std", "act"])
def test_baselines_are_plain_synchronous_training_whatever_the_outer_optimizer(tiny, tmp_path, variant):
    runs = []
    for outer in ("fedavg", "nesterov"):
        cfg = tiny(variant=variant, rounds=3, local_steps=2,
                   overrides={"run.dir": str(tmp_path / outer), "train.outer.kind": outer})
        Trainer(cfg, log=quiet).train()
        shared, _ = load_checkpoint(latest_checkpoint(cfg.run_dir))
        runs.append(([r["train_loss"] for r in round_records(cfg)], shared))
    (loss_a, a), (loss_b, b) = runs
    assert loss_a == loss_b
    assert all(torch.equal(a.body[k], b.body[k]) for k in a.body)
    assert all(torch.equal(a.embedding[k], b.embedding[k]) for k in a.embedding)
    assert not b.momentum


def test_every_variant_scores_the_same_validation_text(tiny, tmp_path, prepared_root):
    scored = {}
    for variant in ("glob", "trim", "spec", "spec_opt", "std"):
        cfg = tiny(variant=variant, rounds=1, local_steps=1, overrides={"run.dir": str(tmp_path / variant)})
        results = Trainer(cfg, log=quiet).train()
        scored[variant] = {r.source: (r.documents, r.bytes) for r in results}
        saved = json.loads((cfg.run_dir / "results.json").read_text())["results"]
        assert {r["source"]: (r["documents"], r["bytes"]) for r in saved} == scored[variant]
    assert all(s == scored["glob"] for s in scored.values()), scored
    # ... and those bytes are the UTF-8 bytes of the leading validation documents of the raw text
    for src in cfg.data.sources:
        documents, nbytes = scored["glob"][src.name]
        val = read_source(src, prepared_root, cfg.data.val_fraction, cfg.data.min_doc_chars).val
        assert nbytes == sum(len(d.encode("utf-8")) for d in val[:documents])
        assert nbytes >= cfg.eval.max_bytes or documents == len(val)
        assert sum(len(d.encode("utf-8")) for d in val[:documents - 1]) < cfg.eval.max_bytes


@pytest.fixture(scope="module")
def mixture_named_root(tmp_path_factory) -> Path:
    """A corpus in which one source is called 'mixture'."""
    root = tmp_path_factory.mktemp("named")
    write_corpus(root / "corpus", docs_per_source=40)
    cfg = renamed_config(root)
    prepare(cfg, log=quiet)
    return root


def renamed_config(root: Path, **train):
    cfg = make_config(root, **train)
    cfg.data.sources[0].name = "mixture"
    return cfg


def test_a_source_named_mixture_trains_on_its_own_data(mixture_named_root):
    cfg = renamed_config(mixture_named_root, variant="spec", rounds=2, sources_per_round=3)
    Trainer(cfg, log=quiet).train()
    store = SourceStore(cfg.run_dir / "sources")
    state = store.load("mixture", 2)
    assert set(state.streams) == {"mixture"}  # its own stream only, not every source's
    per_round = cfg.train.local_steps * cfg.train.batch_size * cfg.train.seq_len
    assert all(r["tokens"]["mixture"] == per_round for r in round_records(cfg))


def test_the_std_mixture_and_a_source_named_mixture_are_different_participants(mixture_named_root):
    cfg = renamed_config(mixture_named_root, variant="std", rounds=1)
    cfg.run.dir = str(mixture_named_root / "std_run")
    results = Trainer(cfg, log=quiet).train()
    record = round_records(cfg)[0]
    assert record["sources"] == ["_mixture"]
    state = SourceStore(cfg.run_dir / "sources").load("_mixture", 1)
    assert set(state.streams) == {"mixture", "fr", "code"} and "mixture" in {r.source for r in results}
