"""Model FLOPs utilisation (MFU) of dept's training step at the paper's 125M and 350M shapes, printed per step.

    python bench/mfu.py --device cuda --shapes 125m,350m --out bench/results/gpu/mfu.json   # (bench/gpu.sh runs it)
    python bench/mfu.py --device cpu --shapes tiny --steps 4 --peak-tflops 1                # a quick check here

What is timed is the worker's step: `dept.algorithm.speed.speed_up` (train.speed=auto: compiled on CUDA),
`dept.algorithm.step.train_step` (forward+loss, backward, clip 1.0, AdamW) with bf16 autocast on CUDA, synchronised
after every step. FLOPs per step are the standard count for a decoder (PaLM, appendix B):
6·N·T for the matrix products of N non-embedding parameters plus the tied output head (d·V), and 12·L·d·S·T for
attention (scores and values), T tokens a step, S the sequence length. MFU = FLOPs per step / step time / peak:
the GPU's dense bf16 peak from a table of known parts, or --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu_model  # noqa: E402

from dept.algorithm.speed import speed_up  # noqa: E402
from dept.algorithm.step import build_optimizer, train_step  # noqa: E402
from dept.config import InnerOptConfig, ModelConfig  # noqa: E402
from dept.model import Body, LanguageModel, SourceEmbedding  # noqa: E402

# The paper's shapes (Table: model sizes): blocks, width, heads. SwiGLU hidden 8/3·d rounded to 64.
SHAPES = {"tiny": (2, 128, 4), "125m": (12, 768, 12), "350m": (24, 1024, 16)}
# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets (without sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def flops_per_step(cfg: ModelConfig, vocab: int, batch: int, seq: int) -> float:
    d, L = cfg.d_model, cfg.n_layers
    body = L * (4 * d * d + 3 * d * cfg.mlp_hidden)
    tokens = batch * seq
    return 6 * (body + d * vocab) * tokens + 12 * L * d * seq * tokens


def measure(shape: str, a, device: torch.device, peak: float | None) -> dict:
    L, d, h = SHAPES[shape]
    cfg = ModelConfig(d_model=d, n_layers=L, n_heads=h, max_seq_len=a.seq)
    torch.manual_seed(0)
    lm = LanguageModel(Body(cfg), SourceEmbedding(a.vocab, cfg)).to(device)
    step_lm = speed_up(lm, a.speed, device, steps=a.warmup + a.steps)
    opt = build_optimizer(lm.parameters(), InnerOptConfig(), device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    batch = torch.randint(0, a.vocab, (a.batch, a.seq + 1), device=device)
    flops = flops_per_step(cfg, a.vocab, a.batch, a.seq)
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = train_step(step_lm, opt, batch, 1.0, precision, micro_batch=a.micro_batch)
        loss.item()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        mfu = flops / dt / (peak * 1e12) if peak else None
        tag = "warm-up" if i < a.warmup else "step"
        print(f"{shape} {tag} {i}: {dt * 1e3:8.1f} ms  {a.batch * a.seq / dt:10.0f} tok/s  "
              f"{flops / dt / 1e12:7.2f} TFLOP/s" + (f"  MFU {100 * mfu:5.1f}%" if mfu is not None else ""),
              flush=True)
        if i >= a.warmup:
            times.append(dt)
    median = statistics.median(times)
    row = {"shape": shape, "blocks": L, "d_model": d, "heads": h, "vocab": a.vocab, "batch": a.batch,
           "seq": a.seq, "micro_batch": a.micro_batch, "precision": precision, "speed": a.speed,
           "params": sum(p.numel() for p in lm.parameters()), "flops_per_step": flops,
           "median_step_s": median, "tokens_per_s": a.batch * a.seq / median,
           "tflops": flops / median / 1e12, "mfu": flops / median / (peak * 1e12) if peak else None}
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--shapes", default="125m,350m", help=f"comma-separated, of {', '.join(SHAPES)}")
    p.add_argument("--vocab", type=int, default=50_257, help="the table one source trains (SPEC-OPT's own)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=0)
    p.add_argument("--speed", default="auto", help="train.speed: auto, eager, compile-body, ...")
    p.add_argument("--warmup", type=int, default=3, help="steps not timed (compilation)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (default: a known GPU's)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    device = torch.device(a.device)
    peak = peak_tflops(device, a.peak_tflops)
    rows = [measure(s, a, device, peak) for s in a.shapes.split(",")]
    result = {"cpu": cpu_model(), "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "peak_tflops": peak, "command": " ".join(["python", *sys.argv]), "rows": rows}
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no peak)"
        print(f"{r['shape']}: {r['params'] / 1e6:.1f}M parameters, {r['tokens_per_s']:.0f} tok/s, "
              f"{r['tflops']:.2f} TFLOP/s, MFU {mfu}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
