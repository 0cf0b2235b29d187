"""Workers that do not answer: the round aggregates those that did (down to train.min_sources), is tried again
below that, and stops cleanly when it cannot; a lost update is never built upon."""

import json

import pytest
import torch

from dept.algorithm.source_store import SourceStore
from dept.checkpoint import latest_checkpoint, load_checkpoint
from dept.engines.local import local_engine
from dept.errors import EngineError
from dept.training import Trainer


class LossyEngine:
    """The local engine, except that the replies `lose(round, attempt, key)` names never come back (the worker
    did train and save its state: the reply was lost on the way)."""

    def __init__(self, cfg, spec, lose):
        self.inner = local_engine(cfg, spec, torch.device("cpu"))
        self.lose = lose
        self.attempts: dict[int, int] = {}

    def profiles(self, participants):
        return self.inner.profiles(participants)

    def run_round(self, assignments):
        r = assignments[0].plan.round
        attempt = self.attempts[r] = self.attempts.get(r, -1) + 1
        updates = self.inner.run_round(assignments)
        return [u for u in updates if not self.lose(r, attempt, u.key)]

    def evaluate(self, assignments):
        return self.inner.evaluate(assignments)


def quiet(*_):
    pass


def trainer_with(cfg, lose):
    from dept.algorithm.variants import spec_of

    return Trainer(cfg, engine=LossyEngine(cfg, spec_of(cfg.train.variant), lose), log=quiet)


def rounds(cfg):
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "round"]


def test_a_lost_update_is_left_out_and_never_built_upon(tiny):
    cfg = tiny(variant="spec_opt", rounds=5, sources_per_round=2, overrides={"train.min_sources": 1})
    lost = {}

    def lose(r, attempt, key):
        if r == 1 and not lost:
            lost["key"] = key
            return True
        return False

    trainer_with(cfg, lose).train()
    records = rounds(cfg)
    assert lost["key"] in records[1]["sources"] and lost["key"] not in records[1]["train_loss"]
    assert len(records[1]["train_loss"]) == 1  # the round aggregated the one that answered
    assert any(lost["key"] in r["train_loss"] for r in records[2:])  # it took part again later
    store = SourceStore(cfg.run_dir / "sources")
    for s in cfg.trained_sources:
        aggregated = sum(s.name in r["train_loss"] for r in records)
        state = store.load(s.name, 5)
        if aggregated:  # its state counts exactly the rounds whose update was aggregated: the lost one is gone
            assert state.rounds_trained == aggregated, s.name


def test_a_retried_round_trains_what_the_first_try_would_have(tiny, tmp_path):
    plain = tiny(variant="trim", rounds=3, overrides={"run.dir": str(tmp_path / "plain")})
    Trainer(plain, log=quiet).train()
    flaky = tiny(variant="trim", rounds=3, overrides={"run.dir": str(tmp_path / "flaky")})
    trainer_with(flaky, lambda r, attempt, key: r == 1 and attempt == 0).train()  # round 2 loses all, once
    a, _ = load_checkpoint(latest_checkpoint(plain.run_dir))
    b, _ = load_checkpoint(latest_checkpoint(flaky.run_dir))
    assert all(torch.equal(a.body[k], b.body[k]) for k in a.body)
    assert all(torch.equal(a.embedding[k], b.embedding[k]) for k in a.embedding)


def test_too_few_answers_stop_the_run_cleanly_and_resume_continues(tiny, tmp_path):
    cfg = tiny(variant="spec", rounds=3, overrides={"run.dir": str(tmp_path / "run"), "train.round_retries": 1})
    with pytest.raises(EngineError, match=r"round 2: only 0 of 2 sampled sources answered in 2 tries.*--resume"):
        trainer_with(cfg, lambda r, attempt, key: r == 1).train()
    assert [r["round"] for r in rounds(cfg)] == [0]
    Trainer(cfg, log=quiet).train(resume=True)  # the workers are back
    plain = tiny(variant="spec", rounds=3, overrides={"run.dir": str(tmp_path / "plain")})
    Trainer(plain, log=quiet).train()
    a, _ = load_checkpoint(latest_checkpoint(plain.run_dir))
    b, _ = load_checkpoint(latest_checkpoint(cfg.run_dir))
    assert all(torch.equal(a.body[k], b.body[k]) for k in a.body)
