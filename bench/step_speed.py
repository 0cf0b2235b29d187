"""Training-step speed of a DEPT worker vs Hugging Face `LlamaForCausalLM` of the same shape.

Command (from the repository root; defaults = d_model 256, 4 layers, 4 heads, vocab 8192, seq 256, batch 8, fp32):

    python3 bench/step_speed.py
    python3 bench/step_speed.py --repeats 7 --steps 5 --profile-steps 2 --out bench/results/step_speed.json
    python3 bench/step_speed.py --device cuda --dtype bf16 --batch 32 --repeats 10 --steps 20   # on a GPU

(--dtype bf16 on a CPU without bf16 hardware, e.g. this AVX2 machine, runs ~50x slower than fp32: use it on a GPU.)

Needs `transformers` (pip install transformers; it must not replace the installed torch).

What is compared
----------------
* ours   = `dept.model.LanguageModel(Body(cfg), SourceEmbedding(vocab, cfg))` with
           `ModelConfig(d_model, n_layers, n_heads, max_seq_len=seq)`; loss = `LanguageModel.loss(windows)`, i.e.
           exactly what `dept.algorithm.worker.Worker.train` calls.
* theirs = `LlamaForCausalLM` with the same hidden size, intermediate_size = `cfg.mlp_hidden`, num_key_value_heads =
           num_heads, tied embeddings, rms_norm_eps 1e-5, rope_theta 10000, attn_implementation="sdpa", no biases,
           use_cache=False. Its weights are COPIED from ours (q/k/v from our fused qkv, gate/up from our fused
           gate_up), so both start from identical parameters; the script checks that the first losses agree.
           Loss (default `--llama-loss manual`): logits = llama(input_ids=windows[:, :-1]).logits, then
           F.cross_entropy(logits.float().flatten(0, 1), windows[:, 1:].flatten()) - the same formula as ours.
           `--llama-loss labels` instead passes labels/shift_labels and lets HF compute the loss.
* step (same for both): `dept.algorithm.step.train_step` with `build_optimizer`, the very step the worker runs:
  set lr, batch -> device, forward + loss (under autocast when --dtype bf16), backward, clip_grad_norm_(1.0),
  AdamW(lr 6e-4, betas (0.9, 0.95), eps 1e-8, wd 0).step(), zero_grad(set_to_none=True); then loss.item().
  The per-phase breakdown times the same operations one by one.

Protocol: W warm-up steps each, then R repeats; in each repeat K steps of one model then K of the other (the
order alternates every repeat), on the same pre-generated random batches. Reported: median tokens/s of each and
the median of the per-repeat ratio ours/theirs (> 1 = ours faster); the ratio of the best repeats (other load on
the machine only ever slows a block down, so it is the least disturbed estimate); the load average before/after.
Then an interleaved per-phase breakdown (forward+loss / backward / clip / optimizer; --breakdown-steps 0 skips it) and a
side-by-side torch.profiler table of the top ops of both models (--profile-steps 0 skips it), to show where any
difference comes from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dept.algorithm.step import build_optimizer, set_learning_rate, train_step
from dept.config import InnerOptConfig, ModelConfig
from dept.model import Body, LanguageModel, SourceEmbedding


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=256, help="tokens per sequence (inputs; windows hold seq+1)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=7, help="R: interleaved repeats")
    p.add_argument("--steps", type=int, default=5, help="K: timed steps per model per repeat")
    p.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per model")
    p.add_argument("--n-batches", type=int, default=8, help="distinct pre-generated batches (cycled)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16 = torch.autocast, fp32 weights")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = os.cpu_count())")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--llama-loss", default="manual", choices=["manual", "labels"],
                   help="manual: same F.cross_entropy as ours on Llama's logits; labels: HF's built-in loss")
    p.add_argument("--breakdown-steps", type=int, default=8,
                   help="interleaved steps per model for the per-phase timing breakdown (0 = skip)")
    p.add_argument("--profile-steps", type=int, default=2,
                   help="steps per model per torch.profiler run; two interleaved runs each (0 = skip)")
    p.add_argument("--profile-rows", type=int, default=22, help="ops listed in the side-by-side profiler table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/step_speed.json")
    return p.parse_args(argv)


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


# ---------------------------------------------------------------------------------------------------------------
# one training step, identical for both: dept.algorithm.step.train_step, what the worker runs


class WithLoss(torch.nn.Module):
    """Gives any model the `loss(windows)` that `train_step` calls."""

    def __init__(self, model: torch.nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model, windows)


class Runner:
    def __init__(self, name: str, model: torch.nn.Module, loss_fn, a, device: torch.device):
        self.name, self.model, self.loss_fn, self.device = name, model, loss_fn, device
        self.model.to(device).train()
        self.params = list(self.model.parameters())
        self.opt = build_optimizer(self.params, InnerOptConfig(lr=a.lr, grad_clip=a.grad_clip), device)
        self.lr, self.clip, self.dtype = a.lr, a.grad_clip, a.dtype
        self.with_loss = WithLoss(model, loss_fn)
        self.losses: list[float] = []

    def autocast(self):
        if self.dtype == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()  # as dept.algorithm.runtime.autocast_context does for fp32

    def step(self, batch_cpu: torch.Tensor, phases: dict | None = None) -> float:
        if phases is None:
            set_learning_rate(self.opt, self.lr)
            batch = batch_cpu.to(self.device, non_blocking=True)
            value = train_step(self.with_loss, self.opt, batch, self.clip, self.dtype).item()
            self.losses.append(value)
            return value
        t = _timer(self.device)
        for group in self.opt.param_groups:
            group["lr"] = self.lr
        batch = batch_cpu.to(self.device, non_blocking=True)
        with self.autocast():
            loss = self.loss_fn(self.model, batch)
        t.mark(phases, "forward+loss")
        loss.backward()
        t.mark(phases, "backward")
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        t.mark(phases, "clip")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        t.mark(phases, "optimizer")
        value = loss.item()
        self.losses.append(value)
        return value


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


def ours_loss(model: LanguageModel, windows: torch.Tensor) -> torch.Tensor:
    return model.loss(windows)


def llama_loss_manual(model, windows: torch.Tensor) -> torch.Tensor:
    inputs, targets = windows[:, :-1], windows[:, 1:]
    logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def llama_loss_labels(model, windows: torch.Tensor) -> torch.Tensor:
    inputs, targets = windows[:, :-1], windows[:, 1:].contiguous()
    return model(input_ids=inputs, labels=targets, shift_labels=targets, use_cache=False).loss


# ---------------------------------------------------------------------------------------------------------------


def timed(runner: Runner, batches: list[torch.Tensor], start: int, k: int) -> float:
    _sync(runner.device)
    t0 = time.perf_counter()
    for i in range(k):
        runner.step(batches[(start + i) % len(batches)])
    _sync(runner.device)
    return time.perf_counter() - t0


def phase_breakdown(runners: list[Runner], batches, steps: int) -> dict[str, dict[str, float]]:
    phases = {r.name: {} for r in runners}
    for i in range(steps):
        order = runners if i % 2 == 0 else runners[::-1]
        for r in order:
            r.step(batches[i % len(batches)], phases[r.name])
    return {name: {k: statistics.median(v) * 1e3 for k, v in ph.items()} for name, ph in phases.items()}


def profile_ops(runners: list[Runner], batches, steps: int, rounds: int = 2) -> dict[str, dict[str, dict]]:
    """Self time per op and step of each model under torch.profiler; `rounds` interleaved profiles, min per op."""
    from torch.profiler import ProfilerActivity, profile

    out: dict[str, dict[str, dict]] = {r.name: {} for r in runners}
    for i in range(rounds):
        for r in (runners if i % 2 == 0 else runners[::-1]):
            cuda = r.device.type == "cuda"
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=acts) as prof:
                for j in range(steps):
                    r.step(batches[j % len(batches)])
                _sync(r.device)
            for e in prof.key_averages():
                ms = (getattr(e, "self_device_time_total", 0) if cuda else e.self_cpu_time_total) / 1e3 / steps
                cur = out[r.name].get(e.key)
                if cur is None or ms < cur["self_ms_per_step"]:
                    out[r.name][e.key] = {"self_ms_per_step": ms, "calls_per_step": e.count / steps}
    return out


def print_op_table(ops: dict[str, dict[str, dict]], rows: int, device: torch.device) -> None:
    ours, theirs = ops["dept"], ops["llama"]
    keys = sorted(set(ours) | set(theirs), key=lambda k: -max(ours.get(k, {}).get("self_ms_per_step", 0),
                                                              theirs.get(k, {}).get("self_ms_per_step", 0)))
    what = "self device (CUDA) time" if device.type == "cuda" else "self CPU time"
    print(f"torch.profiler, {what} in ms per step (min of interleaved profiles), top {rows} ops:")
    print(f"{'op':<58}{'dept ms':>9}{'calls':>7}{'llama ms':>10}{'calls':>7}{'diff ms':>9}")
    for k in keys[:rows]:
        o, t = ours.get(k, {}), theirs.get(k, {})
        om, tm = o.get("self_ms_per_step", 0.0), t.get("self_ms_per_step", 0.0)
        print(f"{k[:57]:<58}{om:>9.1f}{o.get('calls_per_step', 0):>7.0f}{tm:>10.1f}"
              f"{t.get('calls_per_step', 0):>7.0f}{om - tm:>+9.1f}")
    tot_o = sum(v["self_ms_per_step"] for v in ours.values())
    tot_t = sum(v["self_ms_per_step"] for v in theirs.values())
    print(f"{'sum over all ops':<58}{tot_o:>9.1f}{'':>7}{tot_t:>10.1f}{'':>7}{tot_o - tot_t:>+9.1f}")


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

    torch.manual_seed(a.seed)
    ours, cfg = build_ours(a)
    llama = build_llama(a, cfg)
    copy_ours_into_llama(ours, llama)
    p_ours, p_llama = n_params(ours), n_params(llama)
    print(f"parameters: ours {p_ours:,}  llama {p_llama:,}  (mlp_hidden {cfg.mlp_hidden}, head_dim "
          f"{cfg.d_model // cfg.n_heads})")
    assert p_ours == p_llama, f"parameter counts differ: ours {p_ours} vs llama {p_llama}"

    g = torch.Generator().manual_seed(a.seed + 1)
    batches = [torch.randint(0, a.vocab, (a.batch, a.seq + 1), generator=g) for _ in range(max(1, a.n_batches))]
    if device.type == "cuda":
        batches = [b.pin_memory() for b in batches]

    r_ours = Runner("dept", ours, ours_loss, a, device)
    r_llama = Runner("llama", llama, llama_loss_manual if a.llama_loss == "manual" else llama_loss_labels, a, device)

    # Same weights, same batch -> same first loss (sanity check that the two are the same model).
    with torch.no_grad(), r_ours.autocast():
        l0_ours = ours_loss(ours, batches[0].to(device)).item()
        l0_llama = r_llama.loss_fn(llama, batches[0].to(device)).item()
    tol = 1e-4 if a.dtype == "fp32" else 5e-2
    same = abs(l0_ours - l0_llama) <= tol * max(1.0, abs(l0_ours))
    print(f"initial loss on batch 0: ours {l0_ours:.6f}  llama {l0_llama:.6f}  -> {'match' if same else 'DIFFER'}")

    for i in range(a.warmup):
        r_ours.step(batches[i % len(batches)])
        r_llama.step(batches[i % len(batches)])

    tokens = a.batch * a.seq * a.steps
    load_before = os.getloadavg()
    reps = []
    for rep in range(a.repeats):
        start = a.warmup + rep * a.steps
        order = [r_ours, r_llama] if rep % 2 == 0 else [r_llama, r_ours]
        secs = {r.name: timed(r, batches, start, a.steps) for r in order}
        row = {"repeat": rep, "first": order[0].name, "ours_s": secs["dept"], "llama_s": secs["llama"],
               "ours_tok_s": tokens / secs["dept"], "llama_tok_s": tokens / secs["llama"],
               "ratio": secs["llama"] / secs["dept"]}
        reps.append(row)
        print(f"  repeat {rep + 1}/{a.repeats} ({row['first']} first): ours {row['ours_tok_s']:9.0f} tok/s  "
              f"llama {row['llama_tok_s']:9.0f} tok/s  ratio {row['ratio']:.3f}", flush=True)

    load_after = os.getloadavg()
    med_ours = statistics.median(r["ours_tok_s"] for r in reps)
    med_llama = statistics.median(r["llama_tok_s"] for r in reps)
    med_ratio = statistics.median(r["ratio"] for r in reps)
    ratios = sorted(r["ratio"] for r in reps)
    best_ratio = max(r["ours_tok_s"] for r in reps) / max(r["llama_tok_s"] for r in reps)

    breakdown, ops = {}, {}
    if a.breakdown_steps > 0:
        breakdown = phase_breakdown([r_ours, r_llama], batches, a.breakdown_steps)
    if a.profile_steps > 0:
        ops = profile_ops([r_ours, r_llama], batches, a.profile_steps)

    # ---- report ------------------------------------------------------------------------------------------------
    print()
    print(f"DEPT step vs LlamaForCausalLM  |  device {device} ({threads} threads)  dtype {a.dtype}  "
          f"torch {torch.__version__}  transformers {transformers.__version__}")
    print(f"shape: d_model {a.d_model}, layers {a.layers}, heads {a.heads}, vocab {a.vocab}, seq {a.seq}, "
          f"batch {a.batch}  |  {p_ours:,} parameters each  |  R={a.repeats} x K={a.steps} steps, "
          f"llama loss: {a.llama_loss}")
    print(f"{'model':<8}{'median tok/s':>14}{'min tok/s':>12}{'max tok/s':>12}{'ms/step':>10}")
    for name, key in (("dept", "ours_tok_s"), ("llama", "llama_tok_s")):
        vals = [r[key] for r in reps]
        med = statistics.median(vals)
        print(f"{name:<8}{med:>14.0f}{min(vals):>12.0f}{max(vals):>12.0f}{a.batch * a.seq / med * 1e3:>10.1f}")
    print(f"median ratio ours/theirs (tokens/s): {med_ratio:.3f}   (per-repeat range {ratios[0]:.3f} .. "
          f"{ratios[-1]:.3f}; > 1 = dept faster)")
    print(f"ratio of the best repeats (max tok/s ours / max tok/s theirs): {best_ratio:.3f}")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores"
          + ("   <- other work was running: trust the ratios, not the absolute tok/s"
             if device.type == "cpu" and max(load_before[0], load_after[0]) > threads + 0.5 else ""))
    if breakdown:
        print()
        print(f"phase breakdown (synchronised after each phase), median ms/step over {a.breakdown_steps} "
              f"interleaved steps:")
        names = list(next(iter(breakdown.values())).keys())
        print(f"{'phase':<14}{'dept':>10}{'llama':>10}{'dept/llama':>12}")
        for ph in names:
            o, t = breakdown["dept"][ph], breakdown["llama"][ph]
            print(f"{ph:<14}{o:>10.1f}{t:>10.1f}{o / t:>12.2f}")
    if ops:
        print()
        print_op_table(ops, a.profile_rows, device)

    result = {
        "args": vars(a), "device": str(device), "threads": threads, "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "params": {"ours": p_ours, "llama": p_llama}, "mlp_hidden": cfg.mlp_hidden,
        "initial_loss": {"ours": l0_ours, "llama": l0_llama, "match": same},
        "median_tok_s": {"ours": med_ours, "llama": med_llama}, "median_ratio_ours_over_theirs": med_ratio,
        "best_ratio_ours_over_theirs": best_ratio, "loadavg_before": load_before, "loadavg_after": load_after,
        "repeats": reps, "phase_ms": breakdown,
        "profile_ops_ms_per_step": ops,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
