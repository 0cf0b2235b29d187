"""Faster training steps: `torch.compile`, a chunked head and the AdamW implementation, chosen per hardware.

    fast = speed_up(lm, "auto", device)       # lm's parameters, a faster `loss(windows)`; lm itself when eager
    optimizer = build_optimizer(lm.parameters(), inner, device, **optimizer_kwargs(device, "auto"))
    train_step(fast, optimizer, batch, grad_clip, precision)

`speed_up` never changes `lm`: it returns `lm` itself ("eager") or a thin view whose `loss` runs faster code on
lm's own parameters, so state dicts, optimizers, `load_tensors` and the eager `lm` keep working. Two caveats of
torch.compile: forward hooks registered on lm's modules after the first compiled call are silently ignored by
the compiled code (dynamo skips hook guards by default), so run a hooked step with `lm` itself; and changing
`torch.set_num_threads` after compiling recompiles (inductor's CPU kernels are specialised to the thread count).

Modes
-----
* "eager"                - `lm` unchanged (the reference; bit-identical to not calling speed_up).
* "compile-body"         - `torch.compile` of the vocabulary-agnostic `Body` only; embedding, tied head and
                           cross-entropy stay eager. One compiled graph serves every source and round, whatever the
                           vocabulary sizes: the body's shapes depend on the batch shape only.
* "chunked-head"         - eager body; the tied head + cross-entropy by `linear_cross_entropy` (logits made and
                           differentiated 8 MiB at a time, never whole).
* "compile-body-chunked" - both.
* "compile"              - `torch.compile` of the whole loss (embedding, body, tied head, our cross-entropy,
                           mean). The graph depends on the vocabulary size: every new size recompiles (dynamo keeps
                           parameter shapes static whatever `dynamic=` says), and past
                           `torch._dynamo.config.recompile_limit` (8) sizes dynamo runs new ones eagerly.
* "auto"                 - `resolve_mode`: "compile-body-chunked" on a CPU with a C++ compiler, "compile-body" on
                           CUDA (unmeasured: no GPU was lent),
                           "eager" when the caller says fewer than `AUTO_MIN_STEPS` steps will run in this process
                           (compilation would not pay for itself) or no compiler is found.

Measured (bench/step_speed.py; d_model 256, 4 layers, 4 heads, vocab 8192, seq 256, batch 8, fp32, torch 2.13,
AdamW + clip 1.0; AMD EPYC (family 25), 2 cores, AVX2/FMA only - no AVX512-BF16/AMX -; the figures to compare
are the ratios of modes interleaved in one process, bench/results/step_speed.json):
    mode (python bench/step_speed.py --modes ...; R=5 x 3 steps)   median tokens/s   vs eager   loss diff (20 steps)
    ours eager                                                  2278             1.000      0
    ours compile-body + fused AdamW                             2248             1.080      9.5e-07
    ours compile-body-chunked + fused AdamW                     2427             1.097      9.5e-07
    ours compile (whole loss) + fused AdamW                     2404             1.055      6.7e-06
    transformers LlamaForCausalLM eager                         2055             1.007      1.9e-06
    transformers torch.compile(model)                           2248             1.004      9.5e-07
    transformers whole loss compiled + fused AdamW              2472             1.090      1.9e-06
62-77% of every mode's step is in matrix products (torch.profiler), which both sides run through the same GEMM
kernels: what compilation and the chunked head remove is the rest, so on this CPU dept's best mode is 1.06x
(median of per-repeat ratios; range 0.80-1.13) transformers' best, 1.20x its eager mode.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch
from torch import nn

from dept.model import LanguageModel
from dept.model.lm import token_cross_entropy

MODES = ("eager", "compile-body", "chunked-head", "compile-body-chunked", "compile", "auto")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
AUTO_CPU_MODE = "compile-body-chunked"  # the fastest mode measured on a CPU (table above)
AUTO_CUDA_MODE = "compile-body"  # not measured: no GPU was lent for the measurements above
AUTO_MIN_STEPS = 300  # below this many steps per process, compiling (~5-50 s on 2 cores) does not pay off


@functools.cache
def cpu_info() -> dict:
    """CPU model name and the flags that matter for speed (from /proc/cpuinfo; name only elsewhere)."""
    import platform

    name, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    relevant = sorted(f for f in flags if re.fullmatch(
        r"avx|avx2|fma|f16c|avx512f|avx512bw|avx512_vnni|avx512_bf16|avx512_fp16|avx_vnni|amx_\w+|sve|sve2|"
        r"asimd|bf16", f))
    return {"cpu": name or platform.processor(), "cpu_flags_relevant": relevant, "cpu_count": os.cpu_count(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); without them bf16 is emulated and slow."""
    return any(f in cpu_info()["cpu_flags_relevant"] for f in BF16_CPU_FLAGS)


def inductor_usable() -> bool:
    """torch.compile's CPU backend (inductor) writes C++ and needs a compiler on PATH."""
    from shutil import which

    return any(which(c) for c in ("g++", "c++", "clang++"))


def resolve_mode(mode: str, device: torch.device | str, steps: int | None = None) -> str:
    """The concrete mode that `mode` means on `device`; `steps` = steps this process will train, if known."""
    if mode not in MODES:
        raise ValueError(f"unknown speed mode {mode!r}; one of {MODES}")
    if mode != "auto":
        return mode
    device = torch.device(device)
    if steps is not None and steps < AUTO_MIN_STEPS:
        return "eager"
    if device.type == "cuda":
        import importlib.util

        return AUTO_CUDA_MODE if importlib.util.find_spec("triton") else "eager"  # inductor's GPU backend
    if device.type == "cpu" and inductor_usable():
        return AUTO_CPU_MODE
    return "eager"


def optimizer_kwargs(device: torch.device | str, mode: str = "auto") -> dict:
    """Keyword arguments for `build_optimizer`: {"fused": True} (one fused AdamW kernel per tensor; on a CPU ~5x
    faster than torch's default per-tensor loop), or {} for "eager" (today's optimizer, fused only on CUDA)."""
    if mode not in MODES:
        raise ValueError(f"unknown speed mode {mode!r}; one of {MODES}")
    if mode == "eager" or torch.device(device).type not in ("cpu", "cuda"):
        return {}
    return {"fused": True}


def auto_precision(device: torch.device | str) -> str:
    """"bf16" where bf16 runs on bf16 units (CUDA with bf16, CPUs with AVX512-BF16/AMX), else "fp32". Not measured
    here (this machine has neither); bf16 changes the numerics, so it is a choice for the config, not a default."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"


class _LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i @ W^T, t_i) with the logits made, used and dropped a chunk of rows at a time.

    The forward also computes the gradients (softmax - one-hot, times W and times h), so the (N, V) logits and
    their gradient never exist whole: no 64 MB buffers to allocate (fresh pages from the OS on every step on a
    CPU), no passes over them through DRAM. The backward only scales the stored gradients by the incoming one.
    Same matrix products as the stock head; sums in another order (the loss agrees to ~1e-6)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        n = h.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        rows = torch.arange(min(chunk, n), device=h.device)
        for s in range(0, n, chunk):
            hc, tc = h[s:s + chunk], targets[s:s + chunk]
            logits = torch.mm(hc, weight.t()).float()  # (c, V)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tc[:, None]).squeeze(1)).sum()
            if need_h or need_w:
                g = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                g[rows[:tc.shape[0]], tc] -= 1
                g = g.to(h.dtype)
                if need_h:
                    torch.mm(g, weight, out=grad_h[s:s + chunk])
                if need_w:
                    grad_w.addmm_(g.t(), hc)
        ctx.n = n
        ctx.save_for_backward(grad_h, grad_w)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.n
        return (grad_h * scale if grad_h is not None else None,
                grad_w * scale if grad_w is not None else None, None, None)


def head_chunk_rows(vocab_size: int, budget_bytes: int = 8 << 20) -> int:
    """Rows per chunk so that a chunk of fp32 logits takes about `budget_bytes` (8 MiB: in the L3 cache, and
    under glibc's mmap threshold, so the buffer is reused instead of faulted in from the OS each time)."""
    return max(16, budget_bytes // (4 * vocab_size) // 16 * 16)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of `targets` under logits `h @ weight.T`, chunked over rows (see _LinearCrossEntropy)."""
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    return _LinearCrossEntropy.apply(h, weight, targets, chunk or head_chunk_rows(weight.shape[0]))


class FastLM(nn.Module):
    """`lm` seen through a faster `loss(windows)`: the same parameters (lm's own), the same value.

    `body` is lm.body or its compiled form; `chunked_head` computes the tied head and cross-entropy with
    `linear_cross_entropy` when gradients are wanted (and not under autocast)."""

    def __init__(self, lm: LanguageModel, body=None, chunked_head: bool = False):
        super().__init__()
        self.lm = lm
        self.chunked_head = chunked_head
        object.__setattr__(self, "_body", body if body is not None else lm.body)  # not a submodule

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        lm = self.lm
        if self._body is lm.body and not self.chunked_head:
            return lm.loss(windows)
        inputs, targets = windows[:, :-1], windows[:, 1:]
        x = lm.embedding.embed(inputs)
        try:
            h = self._body(x)
        except Exception as err:  # noqa: BLE001 - inductor failing to build (no Python headers, an old compiler)
            if self._body is lm.body:
                raise
            _compile_failed(err)
            object.__setattr__(self, "_body", lm.body)
            h = lm.body(x)
        if self.chunked_head and torch.is_grad_enabled() and not torch.is_autocast_enabled(h.device.type):
            return linear_cross_entropy(h, lm.embedding.tokens.weight, targets)
        return token_cross_entropy(lm.embedding.logits(h), targets).mean()

    def forward(self, *args, **kwargs):
        return self.lm(*args, **kwargs)


class CompiledLoss(nn.Module):
    """`lm` with its whole `loss(windows)` compiled; parameters, state dict and other methods are lm's."""

    def __init__(self, lm: LanguageModel):
        super().__init__()
        self.lm = lm

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        if _COMPILE_FAILED:
            return self.lm.loss(windows)
        try:
            return _compiled_mean_loss()(self.lm, windows)
        except Exception as err:  # noqa: BLE001 - see FastLM.loss
            _compile_failed(err)
            return self.lm.loss(windows)

    def forward(self, *args, **kwargs):
        return self.lm(*args, **kwargs)


def _mean_loss(lm: LanguageModel, windows: torch.Tensor) -> torch.Tensor:
    return LanguageModel.loss(lm, windows)


@functools.cache
def _compiled_mean_loss():
    # One compiled function per process: its cache (on the code object) serves every new LanguageModel of the
    # same shapes without recompiling.
    return torch.compile(_mean_loss)


_COMPILE_FAILED: list[str] = []  # once torch.compile failed in this process, every later speed_up is eager


def _compile_failed(err: Exception) -> None:
    import warnings

    if not _COMPILE_FAILED:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        warnings.warn(f"torch.compile failed on this machine ({type(err).__name__}: {first}); training continues "
                      "eagerly. Set train.speed=eager to skip the attempt.", RuntimeWarning, stacklevel=3)
    _COMPILE_FAILED.append(type(err).__name__)


def speed_up(lm: LanguageModel, mode: str = "auto", device: torch.device | str | None = None,
             steps: int | None = None) -> nn.Module:
    """An object whose `loss(windows)` equals `lm.loss(windows)` (to ~1e-5 in fp32) and trains lm's parameters.

    Returns `lm` itself for "eager"; otherwise a view sharing lm's parameters. Call it once per new `lm`: it is
    cheap, compiled code is cached per process and reused by new modules of the same shapes (no recompilation
    across rounds and sources for "compile-body"). `steps`: how many steps this process will train, for "auto"."""
    if device is None:
        device = next(lm.parameters()).device
    kind = resolve_mode(mode, device, steps)
    if _COMPILE_FAILED and kind.startswith("compile"):
        kind = "chunked-head" if kind == "compile-body-chunked" else "eager"
    if kind == "eager":
        return lm
    if kind == "chunked-head":
        return FastLM(lm, chunked_head=True)
    if kind == "compile-body":
        return FastLM(lm, torch.compile(lm.body))
    if kind == "compile-body-chunked":
        return FastLM(lm, torch.compile(lm.body), chunked_head=True)
    return CompiledLoss(lm)
