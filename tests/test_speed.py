"""Faster steps change how a step is computed, never what: the same loss and gradients as eager, one compiled body
for every vocabulary, and a worker that trains the same body in every mode."""

import json

import pytest
import torch

from dept.algorithm import speed
from dept.algorithm.speed import linear_cross_entropy, resolve_mode, speed_up
from dept.config import ModelConfig
from dept.model import Body, LanguageModel, SourceEmbedding
from dept.model.lm import token_cross_entropy
from dept.training import Trainer

CFG = ModelConfig(d_model=32, n_layers=2, n_heads=4, max_seq_len=32)
needs_compiler = pytest.mark.skipif(not speed.inductor_usable(), reason="torch.compile on CPU needs a C++ compiler")


pytestmark = pytest.mark.usefixtures("one_thread")


def make(vocab: int, seed: int = 0) -> LanguageModel:
    g = torch.Generator().manual_seed(seed)
    body, emb = Body(CFG), SourceEmbedding(vocab, CFG)
    body.reset_parameters(g)
    emb.reset_parameters(g)
    return LanguageModel(body, emb)


def loss_and_grads(model, lm: LanguageModel, windows: torch.Tensor):
    lm.zero_grad(set_to_none=True)
    loss = model.loss(windows)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}


def test_chunked_head_equals_the_stock_cross_entropy():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (37,), generator=g)
    ours = linear_cross_entropy(h, w, t, chunk=8)  # 5 chunks, the last one short
    ours.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = token_cross_entropy(h @ w.t(), t).mean()
    ref.backward()
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(gh, h.grad, atol=1e-6) and torch.allclose(gw, w.grad, atol=1e-6)


@pytest.mark.parametrize("mode", ["chunked-head", pytest.param("compile-body", marks=needs_compiler),
                                  pytest.param("compile-body-chunked", marks=needs_compiler)])
def test_every_mode_gives_eager_loss_and_gradients(mode):
    lm = make(61)
    windows = torch.randint(0, 61, (3, 17), generator=torch.Generator().manual_seed(1))
    ref_loss, ref_grads = loss_and_grads(lm, lm, windows)
    fast = speed_up(lm, mode, "cpu")
    assert fast is not lm and set(dict(fast.named_parameters())) >= {"lm." + n for n, _ in lm.named_parameters()}
    loss, grads = loss_and_grads(fast, lm, windows)
    assert torch.allclose(loss, ref_loss, atol=1e-5)
    for name, grad in ref_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-5), name


@needs_compiler
def test_one_compiled_body_serves_every_source_and_round():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    windows = {v: torch.randint(0, v, (2, 9), generator=torch.Generator().manual_seed(v)) for v in (40, 77, 130)}
    for round_index in range(3):  # a fresh Body and table each time, as the worker builds them every round
        for vocab, w in windows.items():
            lm = make(vocab, seed=round_index)
            assert torch.allclose(speed_up(lm, "compile-body", "cpu").loss(w), lm.loss(w), atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1  # 9 bodies, 3 vocabularies, one graph: no recompiles


def test_auto_is_eager_for_short_runs_and_unknown_modes_are_refused():
    assert resolve_mode("auto", "cpu", steps=speed.AUTO_MIN_STEPS - 1) == "eager"
    assert resolve_mode("chunked-head", "cpu", steps=1) == "chunked-head"  # an explicit choice stands
    assert speed.optimizer_kwargs("cpu", "eager") == {}
    with pytest.raises(ValueError, match="unknown speed mode"):
        resolve_mode("turbo", "cpu")


@needs_compiler
def test_the_worker_trains_the_same_body_in_a_compiled_mode(tiny, tmp_path):
    from torch._dynamo.utils import counters

    from dept.checkpoint import latest_checkpoint, load_checkpoint

    bodies, health, graphs = {}, {}, {}
    for mode in ("eager", "compile-body-chunked"):
        cfg = tiny(variant="spec_opt", rounds=2, speed=mode, overrides={"run.dir": str(tmp_path / mode)})
        torch._dynamo.reset()
        counters.clear()
        Trainer(cfg, log=lambda *_: None).train()
        graphs[mode] = counters["stats"]["unique_graphs"]
        bodies[mode] = load_checkpoint(latest_checkpoint(cfg.run_dir))[0].body
        rounds = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
        health[mode] = [r["stability"] for r in rounds if r["event"] == "round"]
    assert graphs == {"eager": 0, "compile-body-chunked": 1}  # the worker really ran the compiled body
    for name, tensor in bodies["eager"].items():
        assert torch.allclose(bodies["compile-body-chunked"][name], tensor, atol=1e-4), name
    for a, b in zip(health["eager"], health["compile-body-chunked"], strict=True):  # the hooked step still reports
        assert a["activation_norm"] == pytest.approx(b["activation_norm"], rel=1e-3)
        assert all(v > 0 for v in a["activation_norm"].values())


def test_a_compiler_that_fails_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken_compile(module, **_):
        def run(*args, **kwargs):
            raise RuntimeError("InductorError: fatal error: Python.h: No such file or directory")
        return run

    monkeypatch.setattr(speed.torch, "compile", broken_compile)
    monkeypatch.setattr(speed, "_COMPILE_FAILED", [])
    lm = make(61)
    windows = torch.randint(0, 61, (3, 17), generator=torch.Generator().manual_seed(1))
    with pytest.warns(RuntimeWarning, match="Python.h"):
        loss = speed_up(lm, "compile-body", "cpu").loss(windows)
    assert torch.allclose(loss, lm.loss(windows), atol=1e-6)
    assert speed_up(lm, "compile-body", "cpu") is lm  # later models do not try again
