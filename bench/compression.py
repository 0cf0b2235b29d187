"""Compressed uploads: bytes saved against bits per byte lost, for GLOB and SPEC-OPT on the demo corpus.

    python3 bench/compression.py                              # demo corpus, 6 rounds of 10 local steps
    python3 bench/compression.py --rounds 8 --local-steps 25 --jobs 1
    python3 bench/compression.py --quality-shape --out bench/results/compression_quality.json
                                                              # the quality sweep's size, corpus and tuned rates

Each variant trains the same config (same seed) with train.compression none, bf16, int8 (scale per tensor) and
int8 (scale per row), each in a fresh subprocess (one torch thread; `--jobs` of them at a time). From each run
folder: the mean validation bits per byte over the trained sources (results.json), the bytes uploaded and
downloaded over the run (metrics.jsonl, as the local engine counts them: the tensors handed over), and their
ratios to the uncompressed run. Results go to --out as JSON with the machine's CPU.

A short run's bits per byte also move when nothing is lost: any small change of the trajectory moves them. As a
reference, for the variants in `--noise-variants` an uncompressed run is perturbed as little as bf16 rounds, at
random and with no error feedback: every uploaded value θ_k gets θ_k + ε·(θ_start − θ_k), ε uniform in ±2^-8
(bf16's largest relative rounding error). Its change of bits per byte is the spread to read the others against.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"none": ["train.compression=none"], "bf16": ["train.compression=bf16"],
            "int8-tensor": ["train.compression=int8", "train.compression_scale=tensor"],
            "int8-row": ["train.compression=int8", "train.compression_scale=row"],
            "perturbed": ["train.compression=none"]}  # + the random perturbation (`perturbed_run`)


def perturbed_run(config: str, overrides: list[str]) -> None:
    """Train uncompressed, each upload perturbed at random by up to bf16's relative rounding error (2^-8) of its
    pseudo-gradient."""
    import torch

    from dept.algorithm.worker import Worker
    from dept.config import load_config
    from dept.training import Trainer

    generator = torch.Generator().manual_seed(1)
    train = Worker.train

    def perturb(start: dict, trained: dict) -> None:
        for k, v in trained.items():
            eps = (torch.rand(v.shape, generator=generator) * 2 - 1) * 2.0 ** -8
            v.add_((start[k].float() - v) * eps)

    def perturbed(self, assignment):
        update = train(self, assignment)
        perturb(assignment.download.body, update.body)
        if update.embedding is not None:
            perturb(assignment.download.embedding.tensors, update.embedding.tensors)
        return update

    Worker.train = perturbed
    Trainer(load_config(config, overrides), log=lambda *_: None).train()


def quality_shape(a, variant: str) -> list[str]:
    """The quality sweep's model, batch, budget and prepared corpus (bench/quality.py's defaults), at the rate the
    sweep tuned for the variant (bench/results/quality.json) when it has one."""
    sys.path.insert(0, str(ROOT / "bench"))
    import quality

    corpus = "bench" if (Path.home() / ".cache" / "dept" / "bench" / "en_bible.jsonl").is_file() else "demo"
    shape = quality.shape_overrides(quality.build_parser().parse_args(["--corpus", corpus]))
    tuned = ROOT / "bench" / "results" / "quality.json"
    if tuned.is_file():
        lr = json.loads(tuned.read_text()).get("tuned_lr", {}).get(variant)
        if lr:
            shape["train.inner.lr"] = lr
    a.config = str(quality.CORPORA[corpus])
    return [f"{k}={v}" for k, v in shape.items() if k not in ("train.device", "train.precision")]


def train(a, variant: str, setting: str, run_dir: Path) -> dict:
    shape = quality_shape(a, variant) if a.quality_shape else [f"train.rounds={a.rounds}",
                                                               f"train.local_steps={a.local_steps}"]
    overrides = [*shape, f"run.dir={run_dir}", f"train.variant={variant}", "train.engine=local", "train.threads=1",
                 f"eval.max_bytes={a.eval_bytes}", "eval.unseen_adapt_steps=0", *SETTINGS[setting]]
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "dept", "train"] if setting != "perturbed" else \
        [sys.executable, __file__, "--perturbed-run"]
    proc = subprocess.run([*cmd, a.config, *overrides], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{variant} {setting}: {proc.stderr[-2000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    rounds = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if r["event"] == "round"]
    return {"mean_bpb": results["mean_bpb"],
            "bpb": {r["source"]: r["bpb"] for r in results["results"] if not r["unseen"]},
            "bytes_up": sum(sum(r["bytes_up"].values()) for r in rounds),
            "bytes_down": sum(sum(r["bytes_down"].values()) for r in rounds),
            "bytes_moved": results["bytes_moved"], "wall_s": time.perf_counter() - t0}


def main() -> None:
    if sys.argv[1:2] == ["--perturbed-run"]:
        perturbed_run(sys.argv[2], sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--variants", default="glob,spec_opt")
    p.add_argument("--noise-variants", default="glob", help="Variants that also get the perturbed reference run")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--eval-bytes", type=int, default=32768, help="Validation text per source")
    p.add_argument("--jobs", type=int, default=2, help="Runs at a time (one thread each)")
    p.add_argument("--quality-shape", action="store_true",
                   help="the quality sweep's model, budget, corpus and tuned rates instead of --config/--rounds")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "compression.json"))
    a = p.parse_args()

    from dept.config import load_config
    from dept.data.prepare import prepare

    if a.quality_shape:
        quality_shape(a, "glob")  # sets a.config to the sweep's corpus
        prepare(load_config(a.config, quality_shape(a, "glob")), log=lambda *_: None)
    else:
        prepare(load_config(a.config), log=lambda *_: None)  # already prepared: only checked
    variants = a.variants.split(",")
    noisy = [v for v in a.noise_variants.split(",") if v in variants]
    jobs = [(v, s) for v in variants for s in SETTINGS if s != "perturbed" or v in noisy]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(a.jobs) as pool:
        futures = {job: pool.submit(train, a, *job, Path(tmp) / f"{job[0]}_{job[1]}") for job in jobs}
        runs = {job: f.result() for job, f in futures.items()}
    out: dict = {"cpu": cpu_model(), "cores": os.cpu_count(), "settings": vars(a),
                 "wall_s": time.perf_counter() - t0, "variants": {}}
    for v in variants:
        base = runs[(v, "none")]
        rows = {}
        for (variant, s), r in runs.items():
            if variant != v:
                continue
            rows[s] = {**r, "upload_reduction": base["bytes_up"] / r["bytes_up"],
                       "moved_reduction": base["bytes_moved"] / r["bytes_moved"],
                       "bpb_cost": r["mean_bpb"] / base["mean_bpb"] - 1}
            print(f"{v:>8} {s:>11}: bpb {r['mean_bpb']:.4f} ({100 * rows[s]['bpb_cost']:+.2f}%), uploaded "
                  f"{r['bytes_up'] / 1e6:.2f} MB ({rows[s]['upload_reduction']:.2f}× less), moved "
                  f"{r['bytes_moved'] / 1e6:.2f} MB ({rows[s]['moved_reduction']:.2f}× less), {r['wall_s']:.0f} s",
                  flush=True)
        out["variants"][v] = rows
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
