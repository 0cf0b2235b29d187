"""Round overhead at the benchmark size: what a round spends outside the local training steps, as a share.

    python bench/round_overhead.py                  # the quality sweep's shape on the bench corpus (demo if absent)
    python bench/round_overhead.py --local-steps 100 --variants spec_opt

One process, the local engine, the quality sweep's model and batch (`bench/quality.py` defaults), every variant
for a few rounds, with checkpoints every round (the worst case; runs default to the same). Each phase is timed by
wrapping the function that does it:

    steps        `train_step` inside the worker (forward, backward, clip, AdamW): the work itself
    state        a source's private state: `SourceStore.load_after` + `SourceStore.save` (safetensors + JSON)
    aggregate    `Coordinator.aggregate` (outer step, TRIM/GLOB rows, pseudo-gradient norms)
    checkpoint   `RunFolder.save_checkpoint` (body, tables, outer state, manifest with SHA-256, fsync, rename)
    eval         evaluation (excluded from the round: it is measurement, not training)
    other        the rest of the round: building the model and table, the data stream, the round plan

overhead share = (round − steps) / round, where round = everything of the round but evaluation. The median over
rounds after the first (which holds one-off work: reading the prepared data, first allocations) is reported.
Results: bench/results/round_overhead.json with the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

PHASES = ("steps", "state", "aggregate", "checkpoint", "eval")


class Timers:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner, name: str, phase: str) -> None:
        original = getattr(owner, name)
        timers = self

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timers.seconds[phase] += time.perf_counter() - t0

        setattr(owner, name, timed)


def main() -> None:
    import quality

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="spec_opt,spec,trim,glob,std")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "round_overhead.json")
    a = p.parse_args()

    import torch

    from dept.algorithm import coordinator, source_store, worker
    from dept.config import load_config
    from dept.data.prepare import prepare
    from dept.run_folder import RunFolder
    from dept.training import Trainer

    corpus = "bench" if (Path.home() / ".cache" / "dept" / "bench" / "en_bible.jsonl").is_file() else "demo"
    sweep = quality.build_parser().parse_args(["--corpus", corpus, "--local-steps", str(a.local_steps),
                                               "--rounds", str(a.rounds)])
    timers = Timers()
    timers.wrap(worker, "train_step", "steps")
    timers.wrap(source_store.SourceStore, "load_after", "state")
    timers.wrap(source_store.SourceStore, "save", "state")
    timers.wrap(coordinator.Coordinator, "aggregate", "aggregate")
    timers.wrap(RunFolder, "save_checkpoint", "checkpoint")
    timers.wrap(Trainer, "evaluate", "eval")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in a.variants.split(","):
            family = {"std": "std_t0.3"}.get(variant, variant)
            settings = {**quality.shape_overrides(sweep), **quality.FAMILIES[family], "run.dir": f"{tmp}/{variant}",
                        "train.checkpoint_every": 1, "eval.unseen_adapt_steps": 0}
            cfg = load_config(quality.CORPORA[corpus], [f"{k}={v}" for k, v in settings.items()])
            prepare(cfg, log=lambda *_: None)
            trainer = Trainer(cfg, log=lambda *_: None)
            rounds: list[dict] = []
            original = trainer.coordinator.plan

            def plan(*args, _orig=original, rounds=rounds, **kwargs):  # a round starts when it is planned
                rounds.append({"t0": time.perf_counter(), "before": dict(timers.seconds)})
                return _orig(*args, **kwargs)

            trainer.coordinator.plan = plan
            trainer.train()
            ends = [(r["t0"], r["before"]) for r in rounds[1:]] + [(time.perf_counter(), dict(timers.seconds))]
            rows = []
            for r, (end, after) in zip(rounds, ends, strict=True):
                spent = {ph: after.get(ph, 0.0) - r["before"].get(ph, 0.0) for ph in PHASES}
                wall = end - r["t0"] - spent["eval"]
                rows.append({"round_s": wall, **{f"{ph}_s": spent[ph] for ph in PHASES},
                             "other_s": wall - sum(spent[ph] for ph in PHASES if ph != "eval"),
                             "overhead_share": (wall - spent["steps"]) / wall})
            later = rows[1:]
            med = {k: statistics.median(r[k] for r in later) for k in later[0]}
            results[variant] = {"median": med, "rounds": rows}
            print(f"{variant:>9}: round {med['round_s']:.2f} s, steps {med['steps_s']:.2f} s, state "
                  f"{med['state_s'] * 1e3:.0f} ms, aggregate {med['aggregate_s'] * 1e3:.0f} ms, checkpoint "
                  f"{med['checkpoint_s'] * 1e3:.0f} ms, other {med['other_s'] * 1e3:.0f} ms -> overhead "
                  f"{100 * med['overhead_share']:.2f}% of the round", flush=True)
    out = {"command": "python bench/round_overhead.py " + " ".join(sys.argv[1:]), "cpu": cpu_model(),
           "cores": os.cpu_count(), "torch": torch.__version__, "corpus": corpus,
           "shape": {k: v for k, v in quality.shape_overrides(sweep).items() if k.startswith(("model.", "train."))},
           "variants": results,
           "max_overhead_share": max(v["median"]["overhead_share"] for v in results.values())}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"largest overhead share {100 * out['max_overhead_share']:.2f}%  -> {a.out}")


if __name__ == "__main__":
    main()
