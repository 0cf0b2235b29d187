"""Planned vs measured memory of a training step: `dept plan`'s figure against the real step of the real model.

Command (from the repository root; about 5 minutes on 2 cores):

    python bench/plan_memory.py --out bench/results/plan_memory.json
    python bench/plan_memory.py --cases demo,30m,30m-ckpt          # a subset
    python bench/plan_memory.py --measure CONFIG [key=value ...]   # one measurement, one JSON line

Each case is a config (configs/demo.yaml with overrides: data.dir points nowhere for the synthetic sizes, so the
table is the config's vocabulary) measured in a FRESH subprocess (`--measure`):
  1. a warm-up: two steps of a tiny model with the same precision, checkpointing, micro-batches and speed mode
     (lazy imports such as torch._dynamo, thread pools and allocator arenas exist before the baseline), freed, and
     glibc's free lists handed back (malloc_trim);
  2. the baseline: on a CPU, VmRSS after resetting the high-water mark (echo 5 > /proc/self/clear_refs; where that
     is refused, ru_maxrss); on CUDA, memory_allocated() after reset_peak_memory_stats();
  3. what a worker builds: `Body`, a `SourceEmbedding` of the plan's table, `LanguageModel`, `checkpoint_blocks`,
     `speed_up` for train.speed, AdamW from `build_optimizer`, then two `train_step`s (the real step: autocast,
     micro-batches, clipping) on random windows of seq_len + 1 tokens;
  4. measured = peak − baseline (VmHWM, or ru_maxrss; on CUDA max_memory_allocated()).
Planned = `plan_memory(cfg).step_bytes`: parameters, gradients, AdamW moments and one micro-batch's activations
(the coordinator's host copy of the body is not built here, so the host items are left out on both sides). The
plan is an upper bound: with one pass per step the gradients are made as the activations are freed.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu_model  # noqa: E402

MB = 1e6
DEMO = ROOT / "configs" / "demo.yaml"
NOWHERE = ["data.dir=/nonexistent/dept-plan-bench"]  # no prepared data: the table has the config's size
M30 = ["model.d_model=512", "model.n_layers=8", "model.n_heads=8", "model.max_seq_len=256", "train.seq_len=256",
       "train.batch_size=4", "data.tokenizer.per_source.vocab_size=8192"]
M100 = ["model.d_model=768", "model.n_layers=12", "model.n_heads=12", "model.max_seq_len=256", "train.seq_len=256",
        "train.batch_size=4", "data.tokenizer.per_source.vocab_size=16384"]
CASES = {  # name -> overrides of configs/demo.yaml (all on the CPU)
    "demo": [],
    "30m": NOWHERE + M30,
    "30m-ckpt": NOWHERE + M30 + ["train.activation_checkpointing=true"],
    "30m-micro1": NOWHERE + M30 + ["train.micro_batch_size=1"],
    "30m-bf16": NOWHERE + M30 + ["train.precision=bf16"],
    "30m-chunked-head": NOWHERE + M30 + ["train.speed=chunked-head"],
    "100m": NOWHERE + M100,
    "100m-ckpt-micro2": NOWHERE + M100 + ["train.activation_checkpointing=true", "train.micro_batch_size=2"],
}


# ---- one measurement (in its own process) ----------------------------------------------------------------------

def _rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> str:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM"
    except OSError:
        return "ru_maxrss"


def _release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _train_two_steps(cfg, device, vocab_rows: int) -> None:
    import torch

    from dept.algorithm.runtime import seeded_generator
    from dept.algorithm.speed import optimizer_kwargs, resolve_mode, speed_up
    from dept.algorithm.step import build_optimizer, train_step
    from dept.model import Body, LanguageModel, SourceEmbedding

    t = cfg.train
    mode = resolve_mode(t.speed, device, steps=2)
    with device:
        body, embedding = Body(cfg.model), SourceEmbedding(vocab_rows, cfg.model)
    body.reset_parameters(seeded_generator(0, 1))
    embedding.reset_parameters(seeded_generator(0, 2))
    body.checkpoint_blocks = t.activation_checkpointing
    lm = LanguageModel(body, embedding)
    lm.train()
    fast = speed_up(lm, mode, device)
    optimizer = build_optimizer(lm.parameters(), t.inner, device, **optimizer_kwargs(device, mode))
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        batch = torch.randint(0, vocab_rows, (t.batch_size, t.seq_len + 1), generator=generator).to(device)
        train_step(fast, optimizer, batch, t.inner.grad_clip, t.precision, micro_batch=t.micro_batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(config: str, overrides: list[str]) -> dict:
    """Peak memory growth of building the model and running two steps, and the plan's figure for it."""
    import torch

    from dept.config import load_config
    from dept.memory_plan import plan_memory

    cfg = load_config(config, overrides)
    cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    plan = plan_memory(cfg, ranks_per_source=1, on_cpu=not cuda)
    positions = cfg.model.max_seq_len * cfg.model.d_model if cfg.model.positions == "learned" else 0
    vocab_rows = (plan.params.embedding - positions) // cfg.model.d_model
    tiny = load_config(config, overrides + ["model.d_model=32", "model.n_layers=1", "model.n_heads=2",
                                            "model.d_mlp=64", "train.seq_len=16", "model.max_seq_len=16"])
    _train_two_steps(tiny, device, 512)  # warm-up
    _release_free_memory()
    t0 = time.perf_counter()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _train_two_steps(cfg, device, vocab_rows)
        peak, method = torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        method = _reset_peak()
        base = (_rss_kb("VmRSS") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        _train_two_steps(cfg, device, vocab_rows)
        peak = (_rss_kb("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return {"device": device.type, "method": method, "baseline_bytes": base, "peak_bytes": peak,
            "measured_bytes": peak - base, "planned_bytes": plan.step_bytes, "seconds": time.perf_counter() - t0,
            "params": plan.params.total, "planned": {
                "parameters": plan.parameters, "gradients": plan.gradients, "optimizer": plan.optimizer,
                "activations": plan.activations, "micro_batch": plan.micro_batch, "seq_len": plan.seq_len}}


# glibc hands every allocation of 128 KiB or more straight back to the OS when it is freed (a fixed threshold turns
# off its dynamic one, which grows to 32 MiB and then keeps freed tensors in the heap): RSS then follows the bytes of
# live tensors, which is what the plan counts; the default allocator's RSS is what a run really shows.
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(128 << 10)}


def measure_in_subprocess(config: str | Path, overrides: list[str], timeout_s: float = 600,
                          env: dict | None = None) -> dict:
    """`measure` in a fresh Python process (what the test and the benchmark call); `env`: added variables."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure", str(config), *overrides],
                          capture_output=True, text=True, timeout=timeout_s, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    if proc.returncode:
        raise RuntimeError(f"measurement failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the benchmark ----------------------------------------------------------------------------------------------

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--measure", nargs=argparse.REMAINDER, help="CONFIG [key=value ...]: one measurement")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    p.add_argument("--out", type=Path, help="write the JSON here")
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1:])))
        return
    import torch

    rows = []
    print(f"{'case':18} {'params':>8} {'planned MB':>11} {'RSS MB':>8} {'ratio':>6} {'live MB':>8} {'ratio':>6}")
    for name in args.cases.split(","):
        overrides = ["train.device=cpu", *CASES[name]]
        r = measure_in_subprocess(DEMO, overrides)
        live = measure_in_subprocess(DEMO, overrides, env=LIVE_ENV)
        row = {"case": name, "config": "configs/demo.yaml", "overrides": overrides, **r,
               "ratio": r["measured_bytes"] / r["planned_bytes"],
               "measured_live_bytes": live["measured_bytes"], "live_env": LIVE_ENV,
               "ratio_live": live["measured_bytes"] / r["planned_bytes"]}
        rows.append(row)
        print(f"{name:18} {r['params'] / 1e6:7.1f}M {r['planned_bytes'] / MB:11.1f} {r['measured_bytes'] / MB:8.1f} "
              f"{row['ratio']:6.2f} {live['measured_bytes'] / MB:8.1f} {row['ratio_live']:6.2f}", flush=True)
    result = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
              "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
              "python": sys.version.split()[0], "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
