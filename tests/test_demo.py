"""The shipped demo config, shortened: validation loss falls as training goes on."""

import json
from pathlib import Path

from dept.config import load_config
from dept.data.prepare import prepare
from dept.training import Trainer

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_demo_validation_loss_falls(tmp_path):
    cfg = load_config(DEMO, [f"data.dir={tmp_path / 'data'}", f"run.dir={tmp_path / 'run'}", "train.rounds=3",
                             "train.local_steps=8", "eval.every=1", "eval.max_bytes=8192",
                             "eval.unseen_adapt_steps=0"])
    report = prepare(cfg, log=lambda *_: None)
    assert len(report.prepared) == 8
    Trainer(cfg, log=lambda *_: None).train()
    evals = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    means = [e["mean_loss"] for e in evals if e["event"] == "eval"]
    assert len(means) == 3
    assert means[2] < means[1] < means[0]
