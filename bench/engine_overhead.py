"""Engine overhead per round: the local engine, torchrun with 2 ranks (one thread each), and Flower simulation.

    python3 bench/engine_overhead.py                       # the demo corpus, a 4-block d_model 256 body
    python3 bench/engine_overhead.py --local-steps 100 --rounds 4

Each engine trains the same config (SPEC-OPT, 2 sources per round) in a fresh subprocess; every round's metrics
line holds its wall time and each worker's own time (`train_s`: building its model, loading its state, the local
steps, saving its state). The engine overhead of a round is the wall time not spent in workers:

    local     round − Σ worker time          (the sources train one after another)
    torchrun  round − max over ranks of Σ worker time on that rank (ranks train in parallel; sources owned by
              rank index mod 2); the rest is the all-reduce, gathering scalars and waiting for the slower rank
    flower    round − max worker time          (one ClientApp per source, in parallel)

It is reported as a share of the round, over the rounds after the first (which includes start-up: the process
group, Ray's actors). Results go to --out as JSON with the machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def overrides(a, run_dir: Path, engine: str) -> list[str]:
    return [f"run.dir={run_dir}", f"train.engine={engine}", f"train.rounds={a.rounds}",
            f"train.local_steps={a.local_steps}", "train.sources_per_round=2", "train.variant=spec_opt",
            f"model.d_model={a.d_model}", f"model.n_layers={a.n_layers}", "model.n_heads=4",
            "train.batch_size=8", "train.seq_len=128", "train.threads=1", "eval.max_bytes=2048",
            "eval.unseen_adapt_steps=0", "flower.client_cpus=1"]


def run(a, engine: str, tmp: Path) -> list[dict]:
    run_dir = tmp / engine
    args = [a.config, *overrides(a, run_dir, engine)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if engine == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "dept",
               "train", *args]
    else:
        cmd = [sys.executable, "-m", "dept", "train", *args]
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "round"]


def worker_time(engine: str, record: dict) -> float:
    times = record["train_s"]
    if engine == "local":
        return sum(times.values())
    if engine == "torchrun":
        index = {s: i for i, s in enumerate(SOURCES)}
        per_rank = [0.0, 0.0]
        for name, t in times.items():
            per_rank[index[name] % 2] += t
        return max(per_rank)
    return max(times.values())


SOURCES: list[str] = []


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=50)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--engines", default="local,torchrun,flower")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "engine_overhead.json"))
    a = p.parse_args()

    from dept.config import load_config
    from dept.data.prepare import prepare

    cfg = load_config(a.config)
    SOURCES.extend(s.name for s in cfg.data.sources)
    prepare(cfg, log=lambda *_: None)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in a.engines.split(","):
            rounds = run(a, engine, Path(tmp))[1:]
            shares = [(r["elapsed_s"] - worker_time(engine, r)) / r["elapsed_s"] for r in rounds]
            results[engine] = {
                "round_s": statistics.median(r["elapsed_s"] for r in rounds),
                "worker_s": statistics.median(worker_time(engine, r) for r in rounds),
                "overhead_s": statistics.median(r["elapsed_s"] - worker_time(engine, r) for r in rounds),
                "overhead_share": statistics.median(shares),
                "speedup_vs_local": None,
            }
            if engine == "torchrun":  # rank 0's time in the all-reduce, and in gathering (waiting for rank 1)
                results[engine]["all_reduce_s"] = statistics.median(r["engine"]["reduce_s"] for r in rounds)
                results[engine]["gather_s"] = statistics.median(r["engine"]["gather_s"] for r in rounds)
            if "local" in results:
                results[engine]["speedup_vs_local"] = results["local"]["round_s"] / results[engine]["round_s"]
            print(f"{engine:>9}: round {results[engine]['round_s']:.2f} s, workers {results[engine]['worker_s']:.2f}"
                  f" s, overhead {results[engine]['overhead_s']:.3f} s = {100 * results[engine]['overhead_share']:.2f}%"
                  " of the round (median of rounds 2..)"
                  + (f"; all-reduce {results[engine]['all_reduce_s']:.3f} s, waiting for rank 1 "
                     f"{results[engine]['gather_s']:.3f} s" if engine == "torchrun" else ""), flush=True)
    out = {"cpu": cpu_model(), "cores": os.cpu_count(), "settings": vars(a), "engines": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
