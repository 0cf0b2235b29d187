"""Training-step speed of DEPT's modes vs Hugging Face `LlamaForCausalLM`'s modes of the same shape.

Command (from the repository root; defaults = d_model 256, 4 layers, 4 heads, vocab 8192, seq 256, batch 8, fp32):

    python3 bench/step_speed.py                         # default modes, ~5-6 min on 2 idle cores
    python3 bench/step_speed.py --modes all --repeats 5 # every mode that applies to the hardware at hand
    python3 bench/step_speed.py --modes ours:eager,ours:compile-body,theirs:eager,theirs:compile --repeats 9
    python3 bench/step_speed.py --device cuda --batch 32 --modes all   # on a GPU (adds the +bf16 modes)

Needs `transformers` (pip install transformers; it must not replace the installed torch) and, for the compiled
modes, a C++ compiler (torch.compile's CPU backend, inductor, writes C++).

Modes (`--modes`, comma-separated SIDE:VARIANT[+FLAG...][@THREADS])
-------------------------------------------------------------------
ours (`dept.model.LanguageModel(Body, SourceEmbedding)`, loss = `LanguageModel.loss`, what the worker trains;
      the variants are `dept.algorithm.speed.speed_up(lm, VARIANT)` unless said otherwise):
  eager                as the worker runs today
  compile-body         torch.compile of the Body only (vocabulary-agnostic: one graph for every source)
  chunked-head         eager body; tied head + cross-entropy in 8 MiB chunks of logits (speed.linear_cross_entropy)
  compile-body-chunked both
  compile              torch.compile of the whole loss (embedding, body, head, our custom cross-entropy)
  compile-stockce      (bench only) the whole loss compiled, with F.cross_entropy instead of our cross-entropy
  compile-max          (bench only) "compile" with mode="max-autotune" (inductor's GEMM templates; slow to compile)
theirs (`LlamaForCausalLM`, sdpa attention, our weights copied in):
  eager           logits = llama(inputs).logits; F.cross_entropy(logits.float().flatten(0, 1), targets)
  compile         `torch.compile(llama)` (the module, as HF's Trainer torch_compile=True does), loss eager
  compile-loss    the whole loss function compiled (model + F.cross_entropy in one graph)
flags (both sides): +fused / +foreach (AdamW implementation; default: torch's, i.e. the per-tensor loop on CPU,
  fused on CUDA), +bf16 (torch.autocast bf16; only where the CPU has AVX512-BF16/AMX or on CUDA, unless
  --force-bf16), @N (torch.set_num_threads(N) around that mode's steps).
"all" = every variant and flag combination that applies to the hardware (bf16 only where it has bf16 units).

Everything else is the same for every mode: `dept.algorithm.step.train_step` (forward+loss, backward,
clip_grad_norm_(1.0), AdamW(lr 6e-4, betas (0.9, 0.95), eps 1e-8, wd 0).step(), zero_grad) and `.item()` of the loss.

Protocol
--------
1. Numerics and compilation: every mode starts from the same weights (theirs get ours copied in) and trains
   `--curve-steps` steps on the same batches (tokens from a fixed random bigram chain, so the loss falls). The
   loss curves are compared with ours:eager (max abs difference); the first step's time minus a steady step is
   the mode's compile time (dynamo + inductor; inductor's on-disk cache in /tmp/torchinductor_$USER makes later
   processes faster: the JSON says whether it was warm). Compile time is never part of the timing below.
2. Timing: R repeats; in each, K steps of every mode in turn (round-robin blocks, order reversed every other
   repeat), continuing on the same batches. Per mode: median tokens/s and its median per-repeat ratio to
   ours:eager. "ours-best" and "theirs-best" are the modes of each side with the highest median tokens/s;
   their ratio is given as the median of the per-repeat ratios and as the ratio of the best repeats (other load
   on the machine only ever slows a block down, so the best repeats are the least disturbed estimate). The same
   two ratios for ours:eager / theirs:eager (the fp32 eager figure).
3. A per-phase breakdown (forward+loss / backward / clip / optimizer) of the modes, and a torch.profiler run of
   each mode: the share of the step spent in matrix products (aten::mm/addmm/bmm, and SDPA kernels apart).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dept.algorithm import speed
from dept.algorithm.step import build_optimizer, set_learning_rate, train_step
from dept.config import InnerOptConfig, ModelConfig
from dept.model import Body, LanguageModel, SourceEmbedding

OURS_VARIANTS = ("eager", "chunked-head", "compile-body", "compile-body-chunked", "compile", "compile-stockce",
                 "compile-max")
THEIRS_VARIANTS = ("eager", "compile", "compile-loss")
FLAGS = ("fused", "foreach", "bf16")
DEFAULT_MODES = ("ours:eager,ours:compile-body+fused,ours:compile+fused,"
                 "theirs:eager,theirs:compile,theirs:compile-loss+fused")
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_mkldnn_linear", "mkldnn::_linear")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence (inputs; windows hold seq+1)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--modes", default=DEFAULT_MODES, help="comma-separated SIDE:VARIANT[+FLAG..][@THREADS], or all")
    p.add_argument("--repeats", type=int, default=7, help="R: interleaved repeats")
    p.add_argument("--steps", type=int, default=3, help="K: timed steps per mode per repeat")
    p.add_argument("--curve-steps", type=int, default=20,
                   help="untimed steps per mode first: the loss curves compared, and warm-up/compilation")
    p.add_argument("--n-batches", type=int, default=8, help="distinct pre-generated batches (cycled)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = add +bf16 to every mode")
    p.add_argument("--force-bf16", action="store_true", help="allow +bf16 on a CPU without bf16 units (slow)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = os.cpu_count())")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--breakdown-steps", type=int, default=2,
                   help="interleaved steps per mode for the per-phase timing breakdown (0 = skip)")
    p.add_argument("--profile-steps", type=int, default=2, help="steps per mode under torch.profiler (0 = skip)")
    p.add_argument("--profile-rows", type=int, default=16, help="ops listed in the side-by-side profiler table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/step_speed.json")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# modes


@dataclass(frozen=True)
class Mode:
    side: str  # "ours" | "theirs"
    variant: str
    flags: tuple[str, ...] = ()
    threads: int = 0  # 0 = the run's default

    @property
    def name(self) -> str:
        return (f"{self.side}:{self.variant}" + "".join(f"+{f}" for f in self.flags)
                + (f"@{self.threads}" if self.threads else ""))

    @property
    def bf16(self) -> bool:
        return "bf16" in self.flags

    @property
    def fp32_eager(self) -> bool:
        return self.variant == "eager" and not self.flags and not self.threads


def parse_mode(text: str) -> Mode:
    text = text.strip()
    threads = 0
    if "@" in text:
        text, t = text.split("@", 1)
        threads = int(t)
    side, _, rest = text.partition(":")
    variant, *flags = rest.split("+")
    side = {"dept": "ours", "llama": "theirs"}.get(side, side)
    allowed = {"ours": OURS_VARIANTS, "theirs": THEIRS_VARIANTS}.get(side)
    if allowed is None or variant not in allowed:
        raise SystemExit(f"unknown mode {text!r}: ours:{'|'.join(OURS_VARIANTS)} or theirs:{'|'.join(THEIRS_VARIANTS)}")
    for f in flags:
        if f not in FLAGS:
            raise SystemExit(f"unknown flag +{f} in {text!r}: one of {FLAGS}")
    if "fused" in flags and "foreach" in flags:
        raise SystemExit(f"{text!r}: +fused and +foreach exclude each other")
    return Mode(side, variant, tuple(f for f in FLAGS if f in flags), threads)


def bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return speed.cpu_has_bf16()


def all_modes(device: torch.device) -> list[Mode]:
    modes = [Mode("ours", v) for v in OURS_VARIANTS if v != "compile-max"]
    modes += [Mode("ours", "eager", ("foreach",)), Mode("ours", "eager", ("fused",)),
              Mode("ours", "compile-body", ("fused",)), Mode("ours", "compile-body-chunked", ("fused",)),
              Mode("ours", "compile", ("fused",))]
    modes += [Mode("theirs", v) for v in THEIRS_VARIANTS]
    modes += [Mode("theirs", "eager", ("fused",)), Mode("theirs", "compile-loss", ("fused",))]
    if bf16_available(device):
        modes += [Mode("ours", v, ("fused", "bf16")) for v in ("eager", "compile-body", "compile")]
        modes += [Mode("theirs", v, ("fused", "bf16")) for v in ("eager", "compile-loss")]
    return modes


def select_modes(a, device: torch.device) -> tuple[list[Mode], list[str]]:
    modes = all_modes(device) if a.modes.strip() == "all" else [parse_mode(m) for m in a.modes.split(",") if m]
    if a.dtype == "bf16":
        modes = [Mode(m.side, m.variant, tuple(f for f in FLAGS if f in m.flags or f == "bf16"), m.threads)
                 for m in modes]
    skipped, keep = [], []
    for m in modes:
        if m.bf16 and not bf16_available(device) and not a.force_bf16:
            skipped.append(f"{m.name}: no bf16 units on this {device.type} (avx512_bf16/amx not in the CPU flags; "
                           f"bf16 would be emulated and slow; --force-bf16 runs it anyway)")
        elif m.variant.startswith("compile") and device.type == "cpu" and not speed.inductor_usable():
            skipped.append(f"{m.name}: no C++ compiler for inductor")
        elif m not in keep:
            keep.append(m)
    for side in ("ours", "theirs"):
        if not any(m.side == side for m in keep):
            raise SystemExit(f"--modes has no {side}: mode left")
    # ours:eager is the reference of the numerics check and of the per-mode speed-ups
    ref = Mode("ours", "eager", ("bf16",) if a.dtype == "bf16" else ())
    return [ref] + [m for m in keep if m != ref], skipped


# ---------------------------------------------------------------------------------------------------------------
# models


def build_ours(a) -> tuple[LanguageModel, ModelConfig]:
    cfg = ModelConfig(d_model=a.d_model, n_layers=a.layers, n_heads=a.heads, max_seq_len=a.seq)
    body, emb = Body(cfg), SourceEmbedding(a.vocab, cfg)
    g = torch.Generator().manual_seed(a.seed)
    body.reset_parameters(g)
    emb.reset_parameters(g)
    return LanguageModel(body, emb), cfg


def build_llama(a, cfg: ModelConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    lcfg = LlamaConfig(
        vocab_size=a.vocab, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, attention_bias=False,
        mlp_bias=False, attention_dropout=0.0, use_cache=False, hidden_act="silu",
    )
    model = LlamaForCausalLM._from_config(lcfg, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    assert model.lm_head.weight is model.model.embed_tokens.weight, "embeddings are not tied"
    return model


@torch.no_grad()
def copy_ours_into_llama(ours: LanguageModel, llama) -> None:
    d, hid = ours.body.cfg.d_model, ours.body.cfg.mlp_hidden
    m = llama.model
    m.embed_tokens.weight.copy_(ours.embedding.tokens.weight)
    for blk, layer in zip(ours.body.blocks, m.layers, strict=True):
        q, k, v = blk.attn.qkv.weight.split(d, dim=0)
        layer.self_attn.q_proj.weight.copy_(q)
        layer.self_attn.k_proj.weight.copy_(k)
        layer.self_attn.v_proj.weight.copy_(v)
        layer.self_attn.o_proj.weight.copy_(blk.attn.proj.weight)
        gate, up = blk.mlp.gate_up.weight.split(hid, dim=0)
        layer.mlp.gate_proj.weight.copy_(gate)
        layer.mlp.up_proj.weight.copy_(up)
        layer.mlp.down_proj.weight.copy_(blk.mlp.down.weight)
        layer.input_layernorm.weight.copy_(blk.attn_norm.weight)
        layer.post_attention_layernorm.weight.copy_(blk.mlp_norm.weight)
    m.norm.weight.copy_(ours.body.final_norm.weight)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() de-duplicates tied tensors


def llama_loss(model, windows: torch.Tensor) -> torch.Tensor:
    inputs, targets = windows[:, :-1], windows[:, 1:]
    logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def stock_ce_loss(lm: LanguageModel, windows: torch.Tensor) -> torch.Tensor:
    inputs, targets = windows[:, :-1], windows[:, 1:]
    return F.cross_entropy(lm(inputs).float().flatten(0, 1), targets.flatten())


class WithLoss(torch.nn.Module):
    """Gives any model and loss function the `loss(windows)` that `train_step` calls."""

    def __init__(self, model: torch.nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, windows)


def make_trainable(mode: Mode, a, device: torch.device):
    """(parameters' owner, object with .loss(windows)) for a mode, from the same initial weights."""
    ours, cfg = build_ours(a)
    if mode.side == "ours":
        ours.to(device).train()
        if mode.variant in speed.MODES:
            return ours, speed.speed_up(ours, mode.variant, device)
        if mode.variant == "compile-stockce":
            return ours, WithLoss(ours, torch.compile(stock_ce_loss))
        if mode.variant == "compile-max":
            return ours, WithLoss(ours, torch.compile(lambda m, w: m.loss(w), mode="max-autotune"))
    llama = build_llama(a, cfg)
    copy_ours_into_llama(ours, llama)
    llama.to(device).train()
    if mode.variant == "eager":
        return llama, WithLoss(llama, llama_loss)
    if mode.variant == "compile":
        return llama, WithLoss(torch.compile(llama), llama_loss)
    if mode.variant == "compile-loss":
        return llama, WithLoss(llama, torch.compile(llama_loss))
    raise ValueError(mode)


# ---------------------------------------------------------------------------------------------------------------
# one training step: dept.algorithm.step.train_step, what the worker runs


@dataclass
class Runner:
    mode: Mode
    model: torch.nn.Module
    trainable: torch.nn.Module
    device: torch.device
    a: argparse.Namespace
    default_threads: int
    losses: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.params = list(self.model.parameters())
        kwargs = {f: True for f in ("fused", "foreach") if f in self.mode.flags}
        self.opt = build_optimizer(self.params, InnerOptConfig(lr=self.a.lr, grad_clip=self.a.grad_clip),
                                   self.device, **kwargs)
        self.precision = "bf16" if self.mode.bf16 else "fp32"

    @property
    def name(self) -> str:
        return self.mode.name

    @contextlib.contextmanager
    def threads(self):
        if self.mode.threads:
            torch.set_num_threads(self.mode.threads)
        try:
            yield
        finally:
            if self.mode.threads:
                torch.set_num_threads(self.default_threads)

    def step(self, batch_cpu: torch.Tensor) -> float:
        set_learning_rate(self.opt, self.a.lr)
        batch = batch_cpu.to(self.device, non_blocking=True)
        value = train_step(self.trainable, self.opt, batch, self.a.grad_clip, self.precision).item()
        self.losses.append(value)
        return value

    def phased_step(self, batch_cpu: torch.Tensor, phases: dict) -> None:
        t = _timer(self.device)
        set_learning_rate(self.opt, self.a.lr)
        batch = batch_cpu.to(self.device, non_blocking=True)
        with (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if self.mode.bf16
              else contextlib.nullcontext()):
            loss = self.trainable.loss(batch)
        t.mark(phases, "forward+loss")
        loss.backward()
        t.mark(phases, "backward")
        if self.a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.a.grad_clip)
        t.mark(phases, "clip")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t.mark(phases, "optimizer")
        self.losses.append(loss.item())


class _timer:
    def __init__(self, device):
        self.device = device
        _sync(device)
        self.t = time.perf_counter()

    def mark(self, phases: dict, name: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        phases.setdefault(name, []).append(now - self.t)
        self.t = now


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(a) -> list[torch.Tensor]:
    """Tokens from a fixed random bigram chain (each token has 4 likely successors): a learnable signal, so the
    loss curves of the numerics check move."""
    g = torch.Generator().manual_seed(a.seed + 1)
    succ = torch.randint(0, a.vocab, (a.vocab, 4), generator=g)
    out = []
    for _ in range(max(1, a.n_batches)):
        x = torch.empty(a.batch, a.seq + 1, dtype=torch.long)
        x[:, 0] = torch.randint(0, a.vocab, (a.batch,), generator=g)
        pick = torch.randint(0, 4, (a.batch, a.seq), generator=g)
        noise = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)
        use_noise = torch.rand(a.batch, a.seq, generator=g) < 0.1
        for t in range(a.seq):
            nxt = succ[x[:, t], pick[:, t]]
            x[:, t + 1] = torch.where(use_noise[:, t], noise[:, t], nxt)
        out.append(x)
    return out


# ---------------------------------------------------------------------------------------------------------------
# measurements


def timed(runner: Runner, batches: list[torch.Tensor], start: int, k: int) -> float:
    with runner.threads():
        _sync(runner.device)
        t0 = time.perf_counter()
        for i in range(k):
            runner.step(batches[(start + i) % len(batches)])
        _sync(runner.device)
        return time.perf_counter() - t0


def curve_and_compile(runner: Runner, batches, steps: int) -> dict:
    """`steps` untimed steps from the initial weights: the loss curve, and the first step's time (compilation)."""
    with runner.threads():
        for i in range(steps):
            _sync(runner.device)
            t0 = time.perf_counter()
            runner.step(batches[i % len(batches)])
            _sync(runner.device)
            runner.step_s.append(time.perf_counter() - t0)
    steady = statistics.median(runner.step_s[len(runner.step_s) // 2:])
    return {"first_step_s": runner.step_s[0], "steady_step_s": steady,
            "compile_s": max(0.0, runner.step_s[0] - steady) if runner.mode.variant.startswith("compile") else 0.0,
            "losses": list(runner.losses[:steps])}


def phase_breakdown(runners: list[Runner], batches, steps: int) -> dict[str, dict[str, float]]:
    phases = {r.name: {} for r in runners}
    for i in range(steps):
        for r in (runners if i % 2 == 0 else runners[::-1]):
            with r.threads():
                r.phased_step(batches[i % len(batches)], phases[r.name])
    return {name: {k: statistics.median(v) * 1e3 for k, v in ph.items()} for name, ph in phases.items()}


def profile_runner(r: Runner, batches, steps: int) -> dict:
    """Self time per op per step under torch.profiler, and the share of the step's wall time in matmuls/SDPA."""
    from torch.profiler import ProfilerActivity, profile

    cuda = r.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with r.threads(), profile(activities=acts) as prof:
        _sync(r.device)
        t0 = time.perf_counter()
        for j in range(steps):
            r.step(batches[j % len(batches)])
        _sync(r.device)
        wall = (time.perf_counter() - t0) / steps * 1e3
    ops = {}
    for e in prof.key_averages():
        ms = (getattr(e, "self_device_time_total", 0) if cuda else e.self_cpu_time_total) / 1e3 / steps
        ops[e.key] = {"self_ms_per_step": ms, "calls_per_step": e.count / steps}
    mm = sum(v["self_ms_per_step"] for k, v in ops.items() if k in MATMUL_OPS)
    sdpa = sum(v["self_ms_per_step"] for k, v in ops.items() if "scaled_dot_product" in k and k.startswith("aten::_"))
    return {"wall_ms_per_step": wall, "matmul_ms_per_step": mm, "sdpa_ms_per_step": sdpa,
            "matmul_share": mm / wall, "matmul_plus_sdpa_share": (mm + sdpa) / wall,
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]["self_ms_per_step"])[:40])}


def print_op_table(prof: dict[str, dict], names: list[str], rows: int, device: torch.device) -> None:
    what = "self device (CUDA) time" if device.type == "cuda" else "self CPU time"
    ops = {n: prof[n]["ops"] for n in names}
    keys = sorted(set().union(*ops.values()),
                  key=lambda k: -max(o.get(k, {}).get("self_ms_per_step", 0) for o in ops.values()))
    print(f"torch.profiler, {what} in ms per step, top {rows} ops:")
    print(f"{'op':<56}" + "".join(f"{n[:22]:>24}" for n in names))
    for k in keys[:rows]:
        print(f"{k[:55]:<56}" + "".join(f"{ops[n].get(k, {}).get('self_ms_per_step', 0):>24.1f}" for n in names))


def lscpu() -> dict:
    info = dict(speed.cpu_info())
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["cpu"] = value.strip()
            elif key.strip() in ("Vendor ID", "CPU family", "Model", "Hypervisor vendor", "L3 cache"):
                info[key.strip().lower().replace(" ", "_")] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def ratio_stats(reps: list[dict], num: str, den: str) -> dict:
    per = [r["tok_s"][num] / r["tok_s"][den] for r in reps]
    best = max(r["tok_s"][num] for r in reps) / max(r["tok_s"][den] for r in reps)
    return {"num": num, "den": den, "median_ratio": statistics.median(per), "best_repeat_ratio": best,
            "per_repeat_min": min(per), "per_repeat_max": max(per)}


def inductor_cache_dir() -> Path:
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env:
        return Path(env)
    import getpass
    import tempfile

    return Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"


def main(argv=None) -> int:
    a = parse_args(argv)
    threads = a.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: pip install transformers (keep the installed torch)", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    modes, skipped = select_modes(a, device)
    cpu = lscpu()
    cache_dir = inductor_cache_dir()
    cache_warm = cache_dir.is_dir() and any(cache_dir.iterdir())
    print(f"device {device} ({threads} threads)  cpu: {cpu.get('cpu')}  flags: {' '.join(cpu['cpu_flags_relevant'])}")
    print(f"torch {torch.__version__}  transformers {transformers.__version__}  inductor cache "
          f"{'warm' if cache_warm else 'cold'} ({cache_dir})")
    print("modes: " + ", ".join(m.name for m in modes))
    for s in skipped:
        print(f"  skipped {s}")

    ours0, cfg = build_ours(a)
    llama0 = build_llama(a, cfg)
    p_ours, p_llama = n_params(ours0), n_params(llama0)
    assert p_ours == p_llama, f"parameter counts differ: ours {p_ours} vs llama {p_llama}"
    del ours0, llama0
    print(f"parameters: {p_ours:,} each (mlp_hidden {cfg.mlp_hidden}, head_dim {cfg.d_model // cfg.n_heads})")
    batches = make_batches(a)
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]

    runners = []
    for m in modes:
        model, trainable = make_trainable(m, a, device)
        runners.append(Runner(m, model, trainable, device, a, threads))

    # 1. loss curves from identical weights and batches (also warm-up and compilation)
    curves = {}
    for r in runners:
        curves[r.name] = curve_and_compile(r, batches, a.curve_steps)
        c = curves[r.name]
        print(f"  {r.name:<28} first step {c['first_step_s']:7.1f} s (compile ~{c['compile_s']:5.1f} s), "
              f"steady {c['steady_step_s'] * 1e3:6.0f} ms  loss {c['losses'][0]:.5f} -> {c['losses'][-1]:.5f}",
              flush=True)
    ref = runners[0].name
    ref_curve = curves[ref]["losses"]
    for r in runners:
        c = curves[r.name]
        diffs = [abs(x - y) for x, y in zip(c["losses"], ref_curve, strict=True)]
        c["max_abs_diff_vs_ours_eager"] = max(diffs)
        c["max_rel_diff_vs_ours_eager"] = max(d / abs(y) for d, y in zip(diffs, ref_curve, strict=True))
        c["first_loss_abs_diff"] = diffs[0]
        c["tolerance_rel"] = 1e-2 if r.mode.bf16 else 1e-4  # fp32: rounding only; bf16: within noise
        c["agrees"] = c["max_rel_diff_vs_ours_eager"] <= c["tolerance_rel"]

    # 2. interleaved timing
    tokens = a.batch * a.seq * a.steps
    load_before = os.getloadavg()
    reps = []
    start = a.curve_steps
    for rep in range(a.repeats):
        order = runners if rep % 2 == 0 else runners[::-1]
        secs = {}
        for r in order:
            secs[r.name] = timed(r, batches, start, a.steps)
        start += a.steps
        row = {"repeat": rep, "order": [r.name for r in order], "seconds": secs,
               "tok_s": {n: tokens / s for n, s in secs.items()}}
        reps.append(row)
        print(f"  repeat {rep + 1}/{a.repeats}: " + "  ".join(f"{n} {v:6.0f}" for n, v in row["tok_s"].items()),
              flush=True)
    load_after = os.getloadavg()

    per_mode = {}
    for r in runners:
        vals = [row["tok_s"][r.name] for row in reps]
        med = statistics.median(vals)
        per_mode[r.name] = {"median_tok_s": med, "min_tok_s": min(vals), "max_tok_s": max(vals),
                            "ms_per_step": a.batch * a.seq / med * 1e3,
                            "speedup_vs_ours_eager": ratio_stats(reps, r.name, ref)["median_ratio"],
                            "compile_s": curves[r.name]["compile_s"],
                            "max_abs_loss_diff_vs_ours_eager": curves[r.name]["max_abs_diff_vs_ours_eager"]}
    best = {side: max((r.name for r in runners if r.mode.side == side), key=lambda n: per_mode[n]["median_tok_s"])
            for side in ("ours", "theirs")}
    headline = ratio_stats(reps, best["ours"], best["theirs"])
    fp32_eager = None
    eager_o = next((r.name for r in runners if r.mode.side == "ours" and r.mode.fp32_eager), None)
    eager_t = next((r.name for r in runners if r.mode.side == "theirs" and r.mode.fp32_eager), None)
    if eager_o and eager_t:
        fp32_eager = ratio_stats(reps, eager_o, eager_t)
    ours_best_vs_theirs_eager = ratio_stats(reps, best["ours"], eager_t) if eager_t else None

    # 3. breakdown and profile
    breakdown = phase_breakdown(runners, batches, a.breakdown_steps) if a.breakdown_steps > 0 else {}
    prof = {r.name: profile_runner(r, batches, a.profile_steps) for r in runners} if a.profile_steps > 0 else {}

    # ---- report ------------------------------------------------------------------------------------------------
    print()
    print(f"DEPT vs LlamaForCausalLM training step  |  {device} ({threads} threads), {cpu.get('cpu')}  "
          f"[{' '.join(cpu['cpu_flags_relevant'])}]  torch {torch.__version__}  transformers "
          f"{transformers.__version__}")
    print(f"shape: d_model {a.d_model}, layers {a.layers}, heads {a.heads}, vocab {a.vocab}, seq {a.seq}, "
          f"batch {a.batch}  |  {p_ours:,} parameters  |  R={a.repeats} x K={a.steps} steps per mode")
    print(f"{'mode':<30}{'median tok/s':>13}{'min':>8}{'max':>8}{'ms/step':>9}{'vs ours:eager':>14}"
          f"{'compile s':>10}{'loss diff':>11}")
    for name, s in per_mode.items():
        print(f"{name:<30}{s['median_tok_s']:>13.0f}{s['min_tok_s']:>8.0f}{s['max_tok_s']:>8.0f}"
              f"{s['ms_per_step']:>9.1f}{s['speedup_vs_ours_eager']:>14.3f}{s['compile_s']:>10.1f}"
              f"{s['max_abs_loss_diff_vs_ours_eager']:>11.2e}")
    print(f"\nours-best {best['ours']} / theirs-best {best['theirs']}: median per-repeat ratio "
          f"{headline['median_ratio']:.3f} (range {headline['per_repeat_min']:.3f} .. "
          f"{headline['per_repeat_max']:.3f}), "
          f"best-repeat ratio {headline['best_repeat_ratio']:.3f}   (> 1 = dept faster)")
    if fp32_eager:
        print(f"fp32 eager {eager_o} / {eager_t}: median ratio {fp32_eager['median_ratio']:.3f}, best-repeat "
              f"ratio {fp32_eager['best_repeat_ratio']:.3f}")
    if ours_best_vs_theirs_eager:
        print(f"ours-best / theirs eager: median ratio {ours_best_vs_theirs_eager['median_ratio']:.3f}, "
              f"best-repeat ratio {ours_best_vs_theirs_eager['best_repeat_ratio']:.3f}")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores"
          + ("   <- other work was running: trust the ratios, not the absolute tok/s"
             if device.type == "cpu" and max(load_before[0], load_after[0]) > threads + 0.5 else ""))
    print(f"numerics ({a.curve_steps} steps from identical weights and batches; loss {ref_curve[0]:.5f} -> "
          f"{ref_curve[-1]:.5f} for {ref}): max |loss - {ref}| "
          + ", ".join(f"{n} {c['max_abs_diff_vs_ours_eager']:.1e}" for n, c in curves.items() if n != ref)
          + ("  -> all agree" if all(c["agrees"] for c in curves.values()) else
             "  -> DISAGREE: " + ", ".join(n for n, c in curves.items() if not c["agrees"])))
    if breakdown:
        print(f"\nphase breakdown, median ms/step over {a.breakdown_steps} interleaved steps:")
        phases = list(next(iter(breakdown.values())).keys())
        print(f"{'mode':<30}" + "".join(f"{p:>14}" for p in phases))
        for name, ph in breakdown.items():
            print(f"{name:<30}" + "".join(f"{ph[p]:>14.1f}" for p in phases))
    if prof:
        print(f"\nprofile ({a.profile_steps} steps per mode): share of the step's wall time in matrix products")
        print(f"{'mode':<30}{'wall ms':>9}{'matmul ms':>11}{'sdpa ms':>9}{'matmul %':>10}{'+sdpa %':>9}")
        for name, p in prof.items():
            print(f"{name:<30}{p['wall_ms_per_step']:>9.0f}{p['matmul_ms_per_step']:>11.0f}{p['sdpa_ms_per_step']:>9.0f}"
                  f"{100 * p['matmul_share']:>10.1f}{100 * p['matmul_plus_sdpa_share']:>9.1f}")
        print()
        print_op_table(prof, list(dict.fromkeys([best["ours"], best["theirs"], ref] + ([eager_t] if eager_t else []))),
                       a.profile_rows, device)

    result = {
        "args": vars(a), "device": str(device), "threads": threads, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "cpu": cpu.get("cpu"), "cpu_flags_relevant": cpu["cpu_flags_relevant"], "cpu_details": cpu,
        "bf16_units": bf16_available(device), "inductor_cache_warm_at_start": cache_warm,
        "params": p_ours, "mlp_hidden": cfg.mlp_hidden,
        "modes": [r.name for r in runners], "skipped_modes": skipped,
        "per_mode": per_mode, "ours_best": best["ours"], "theirs_best": best["theirs"],
        "ours_best_over_theirs_best": headline, "fp32_eager_ours_over_theirs": fp32_eager,
        "ours_best_over_theirs_eager": ours_best_vs_theirs_eager,
        "numerics": curves, "loadavg_before": load_before, "loadavg_after": load_after, "repeats": reps,
        "phase_ms": breakdown, "profile": prof, "wall_s": time.perf_counter() - t_start,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}  ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
