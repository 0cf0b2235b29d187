"""The seam a distributed engine uses, driven by an engine written here from scratch (not the local one).

`WireEngine` sends every assignment and every update through bytes, as a network would (safetensors), runs the
round's participants in reverse order, and builds its workers from the config alone, as a remote site would. The
round loop must give exactly what the local engine gives.
"""

import json

import pytest
import torch
from safetensors.torch import load, save

from dept.algorithm.participants import LocalData
from dept.algorithm.source_store import SourceStore
from dept.algorithm.types import Assignment, Download, TableRows, Transfer, WholeTable, WorkerUpdate
from dept.algorithm.variants import spec_of
from dept.algorithm.worker import Worker
from dept.checkpoint import latest_checkpoint, load_checkpoint
from dept.data.prepared import PreparedData
from dept.eval.validation import SourceEvaluator
from dept.training import Trainer


def encode(body, payload) -> bytes:
    tensors = {f"body.{k}": v for k, v in body.items()}
    if isinstance(payload, WholeTable):
        tensors.update({f"whole.{k}": v for k, v in payload.tensors.items()})
    elif isinstance(payload, TableRows):
        tensors.update({f"rows.{k}": v for k, v in payload.tensors.items()})
        if payload.ids is not None:
            tensors["ids"] = payload.ids
    return save({k: v.contiguous() for k, v in tensors.items()})


def decode(data: bytes):
    tensors = load(data)
    body = {k[5:]: v for k, v in tensors.items() if k.startswith("body.")}
    whole = {k[6:]: v for k, v in tensors.items() if k.startswith("whole.")}
    rows = {k[5:]: v for k, v in tensors.items() if k.startswith("rows.")}
    payload = WholeTable(whole) if whole else TableRows(rows, tensors.get("ids")) if rows else None
    return body, payload


class WireEngine:
    encode = staticmethod(encode)  # how assignments and updates become bytes (a subclass may send other parts)
    decode = staticmethod(decode)

    def __init__(self, cfg):
        spec = spec_of(cfg.train.variant)
        self.data = LocalData(cfg, spec, PreparedData(cfg.data_dir))
        store = SourceStore(cfg.run_dir / "sources")
        device = torch.device("cpu")
        self.worker = Worker(cfg, spec, self.data, store, device)
        self.evaluator = SourceEvaluator(cfg, spec, self.data, store, device)
        self.wire_bytes = []

    def profiles(self, participants):
        return [self.data.profile(p) for p in participants]

    def run_round(self, assignments):
        replies = {}
        for a in reversed(assignments):
            down = self.encode(a.download.body, a.download.embedding)
            received = Assignment(a.participant, a.plan, Download(*self.decode(down)), a.state_round)
            update = self.worker.train(received)
            up = self.encode(update.body, update.embedding)
            body, payload = self.decode(up)
            replies[a.participant.key] = WorkerUpdate(update.participant, update.round, body, update.tokens,
                                                      payload, update.train_loss, update.last_loss,
                                                      moved=Transfer(len(down), len(up)))
            self.wire_bytes.append((a.download.nbytes, update.nbytes, len(down), len(up)))
        return [replies[a.participant.key] for a in assignments]

    def evaluate(self, assignments):
        return [self.evaluator.evaluate(a) for a in assignments]


def losses(cfg):
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["train_loss"] for r in map(json.loads, lines) if r["event"] == "round"]


@pytest.mark.parametrize("variant", ["spec_opt", "trim", "glob", "std"])
def test_an_engine_written_from_scratch_gives_the_local_result(tiny, tmp_path, variant):
    local = tiny(variant=variant, rounds=3, overrides={"run.dir": str(tmp_path / "local"),
                                                       "train.outer.kind": "nesterov"})
    expected = Trainer(local, log=lambda *_: None).train()

    wired = tiny(variant=variant, rounds=3, overrides={"run.dir": str(tmp_path / "wire"),
                                                       "train.outer.kind": "nesterov"})
    engine = WireEngine(wired)
    got = Trainer(wired, engine=engine, log=lambda *_: None).train()

    assert losses(local) == losses(wired)
    a, _ = load_checkpoint(latest_checkpoint(local.run_dir))
    b, _ = load_checkpoint(latest_checkpoint(wired.run_dir))
    for part in ("body", "embedding", "momentum"):
        assert getattr(a, part).keys() == getattr(b, part).keys()
        assert all(torch.equal(getattr(a, part)[k], getattr(b, part)[k]) for k in getattr(a, part))
    assert [(r.source, r.loss, r.bytes) for r in expected] == [(r.source, r.loss, r.bytes) for r in got]
    # the bytes on the wire are the tensors' bytes plus the format's framing (one JSON header per message)
    for tensors_down, tensors_up, wire_down, wire_up in engine.wire_bytes:
        assert 0 < wire_down - tensors_down < 4096 and 0 < wire_up - tensors_up < 4096
