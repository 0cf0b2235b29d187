"""Bytes on the wire, measured on both sides: data-parallel STD against the DEPT variants, the same run length.

    python3 bench/std_vs_dept_bytes.py                        # the demo config as it is (8 rounds × 25 steps)
    python3 bench/std_vs_dept_bytes.py --variants std,spec_opt --ranks 3

Every run goes through torchrun with one rank per sampled source (`--ranks`, default the config's
sources_per_round), one thread each, on the demo corpus:
- STD trains its one model data-parallel on all ranks, each rank a share of every mixed batch, and counts the
  gradient bytes each rank hands to the all-reduce at every step (DDP's buckets, `engine.grad_all_reduce_bytes`);
  moved = sent + received, summed over the ranks;
- a DEPT variant counts, per round, what each sampled source downloaded and uploaded (`bytes_down`, `bytes_up`).
Beside each: the formula (`std_equivalent_bytes`: every parameter all-reduced at every step by as many workers as
a round has sources). Results go to --out as JSON with the machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def train(config: str, variant: str, ranks: int, run_dir: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "dept",
           "train", config, f"train.variant={variant}", f"run.dir={run_dir}", "train.threads=1", *extra]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    results = json.loads((run_dir / "results.json").read_text())
    rounds = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if r["event"] == "round"]
    return {"bytes_moved": results["bytes_moved"], "std_formula_bytes": results["std_equivalent_bytes"],
            "measured_all_reduce": variant in ("std", "act"),
            "rounds": len(rounds), "steps": sum(r["lr_steps"][1] - r["lr_steps"][0] for r in rounds),
            "mean_bpb": results["mean_bpb"], "wall_s": sum(r["elapsed_s"] for r in rounds)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--variants", default="std,spec_opt,trim,glob")
    p.add_argument("--ranks", type=int, default=0, help="torchrun ranks (0 = the config's sources per round)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "std_vs_dept_bytes.json"))
    p.add_argument("overrides", nargs="*", help="settings for every run, key.path=value")
    a = p.parse_args()

    from dept.config import load_config
    from dept.data.prepare import prepare

    cfg = load_config(a.config, a.overrides)
    prepare(cfg, log=lambda *_: None)
    ranks = a.ranks or cfg.sources_per_round
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in a.variants.split(","):
            runs[variant] = train(a.config, variant, ranks, Path(tmp) / variant, a.overrides)
            r = runs[variant]
            how = "measured all-reduce" if r["measured_all_reduce"] else "measured round traffic"
            print(f"{variant:>9}: {r['bytes_moved'] / 1e6:,.1f} MB moved ({how}), "
                  f"STD formula {r['std_formula_bytes'] / 1e6:,.1f} MB, {r['steps']} sequential steps, "
                  f"mean bits/byte {r['mean_bpb']:.4f}", flush=True)
    if "std" in runs:
        for r in runs.values():
            r["less_than_measured_std"] = runs["std"]["bytes_moved"] / r["bytes_moved"]
    out = {"cpu": cpu_model(), "cores": os.cpu_count(), "ranks": ranks, "config": a.config,
           "overrides": a.overrides, "runs": runs}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
