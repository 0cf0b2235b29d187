"""A source whose round ends in NaN or inf: its update is left out of the round (exactly like a lost update), its
state stays as it was, the event is logged; or, with `train.on_nonfinite: stop`, the run stops before aggregating
and resumes from its last checkpoint."""

import json
import math

import pytest
import torch
from test_lost_updates import trainer_with

import dept.algorithm.worker as worker_module
from dept.checkpoint import latest_checkpoint, load_checkpoint
from dept.errors import TrainingError
from dept.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(*_):
    pass


@pytest.fixture
def poison(monkeypatch):
    """`poison(round, key, step)`: that source's round overflows at that local step (its first body weight
    becomes NaN, as after an overflow), whatever the engine."""
    target = {}
    real_train, real_step = worker_module.Worker.train, worker_module.train_step
    current = {}

    def train(self, assignment):
        current["hit"] = (assignment.plan.round, assignment.participant.key) == target.get("at")
        current["step"] = 0
        return real_train(self, assignment)

    def step(model, *args, **kwargs):
        loss = real_step(model, *args, **kwargs)
        current["step"] += 1
        if current["hit"] and current["step"] == target["step"]:
            with torch.no_grad():
                next(model.parameters()).fill_(math.nan)
        return loss

    monkeypatch.setattr(worker_module.Worker, "train", train)
    monkeypatch.setattr(worker_module, "train_step", step)

    def set_target(round_index: int, key: str, step_index: int) -> None:
        target["at"], target["step"] = (round_index, key), step_index

    return set_target


def events(cfg, kind):
    return [r for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == kind]


@pytest.mark.parametrize("step", [1, 3])  # NaN in the following losses; or only in the tensors (the last step)
def test_a_nonfinite_update_is_left_out_like_a_lost_one(tiny, tmp_path, poison, step):
    rounds = tiny(variant="spec_opt", rounds=4, overrides={"run.dir": str(tmp_path / "lost"), "train.min_sources": 1})
    first = Trainer(rounds, log=quiet)
    key = first.coordinator.plan(1).keys[0]
    del first
    trainer_with(rounds, lambda r, attempt, k: (r, k) == (1, key)).train()  # the reference: that reply lost

    poison(1, key, step)
    cfg = tiny(variant="spec_opt", rounds=4, overrides={"run.dir": str(tmp_path / "nan")})
    lines = []
    results = Trainer(cfg, log=lines.append).train()

    [event] = events(cfg, "nonfinite")
    assert (event["round"], event["source"], event["action"]) == (1, key, "skip")
    assert ("loss nan at local step" in event["what"]) == (step < 3)
    assert any(f"{key}:" in line and "left out" in line for line in lines)
    assert key not in events(cfg, "round")[1]["train_loss"]
    assert all(math.isfinite(r.bpb) for r in results)
    nan_body, nan_state = load_checkpoint(latest_checkpoint(cfg.run_dir))
    lost_body, lost_state = load_checkpoint(latest_checkpoint(rounds.run_dir))
    assert nan_state.last_round == lost_state.last_round
    for name, value in lost_body.body.items():
        assert torch.equal(nan_body.body[name], value), name  # the same run as with the update lost
    assert not (cfg.run_dir / "sources" / key / "r000001.safetensors").exists()  # its state was not saved


def test_on_nonfinite_stop_stops_before_aggregating_and_resumes(tiny, tmp_path, poison):
    cfg = tiny(variant="trim", rounds=3, overrides={"train.on_nonfinite": "stop"})
    key = Trainer(cfg, log=quiet).coordinator.plan(1).keys[-1]
    poison(1, key, 2)
    with pytest.raises(TrainingError, match=rf"round 2: {key}: loss nan .*on_nonfinite=stop.*round_00001 is intact"):
        Trainer(cfg, log=quiet).train()
    assert latest_checkpoint(cfg.run_dir).name == "round_00001"
    assert [e["round"] for e in events(cfg, "round")] == [0]
    poison(-1, "", 0)  # the overflow does not happen again
    cfg.train.on_nonfinite = "skip"  # may change on resume
    Trainer(cfg, log=quiet).train(resume=True)
    assert [e["round"] for e in events(cfg, "round")] == [0, 1, 2]
    assert events(cfg, "nonfinite") == []  # the stopped round's event went with the round


def test_flower_messages_carry_the_nonfinite_flag():
    fm = pytest.importorskip("dept.engines.flower_messages")
    from dept.algorithm.types import Source, WorkerUpdate

    update = WorkerUpdate(Source("en", 0), 2, {"w": torch.full((2, 2), math.nan)}, 10, nonfinite="loss nan at local "
                          "step 1 of 3")
    assert fm.decode_update(fm.encode_update(update)).nonfinite == update.nonfinite
    assert update.receipt().nonfinite == update.nonfinite  # what torchrun's other ranks learn of it
