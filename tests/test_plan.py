"""`dept plan`: parameter counts of the real model classes, hand-computed bytes, the activation formula against what
autograd really keeps, the command's verdict and exit code, and the plan against a measured step."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_tree

from dept.config import config_from_dict, load_config
from dept.errors import ConfigError
from dept.memory_plan import GiB, activation_bytes, plan_memory
from dept.model import Body, LanguageModel, SourceEmbedding

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "configs" / "paper_1.7b.yaml"


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny(tmp_path, model=None, **train):
    """The conftest's tiny config (d 32, 2 blocks, 2 heads, per-source vocabulary 320), not prepared."""
    tree = tiny_tree(tmp_path, **train)
    tree["model"].update(model or {})
    return config_from_dict(tree, "test", base_dir=tmp_path)


# ---- (a) the paper's 1.71B model --------------------------------------------------------------------------------

def test_the_papers_model_built_on_the_meta_device_has_the_plans_and_the_papers_counts():
    cfg = load_config(PAPER)
    with torch.device("meta"):
        body = Body(cfg.model)
        global_table = SourceEmbedding(cfg.data.tokenizer.global_.vocab_size, cfg.model)
        own_table = SourceEmbedding(cfg.data.tokenizer.per_source.vocab_size, cfg.model)
    d, h, layers = 2048, 5376, 24
    by_hand = layers * (4 * d * d + 3 * d * h + 2 * d) + d  # attention, SwiGLU, two RMSNorms a block; final norm
    assert by_hand == 1_195_476_992 == numel(body)
    assert abs(by_hand - 1.198e9) / 1.198e9 < 0.003  # the paper reports a 1.198B body
    assert numel(global_table) == 250_112 * 2048 == 512_229_376
    assert numel(own_table) == 50_257 * 2048 == 102_926_336

    spec_opt = plan_memory(cfg)
    assert (spec_opt.params.body, spec_opt.params.embedding) == (numel(body), numel(own_table))
    glob = plan_memory(load_config(PAPER, ["train.variant=glob"]))
    assert (glob.params.body, glob.params.embedding) == (numel(body), numel(global_table))
    assert round(glob.params.total / 1e9, 2) == 1.71  # "1.71B total"
    assert round(1 - spec_opt.params.total / glob.params.total, 2) == 0.24  # "the whole model 24% smaller"


def test_learned_positions_and_trim_tables_count_as_the_model_builds_them(tmp_path, prepared_root):
    cfg = tiny(tmp_path, {"positions": "learned"}, variant="glob")
    plan = plan_memory(cfg)
    assert plan.params.embedding == numel(SourceEmbedding(400, cfg.model)) == (400 + 64) * 32
    assert plan.params.body == numel(Body(cfg.model))
    # TRIM on prepared data: the largest V_k the worker would build its table with (unprepared: all of V)
    from dept.data.prepared import PreparedData

    trim = plan_memory(config_from_dict(tiny_tree(prepared_root, variant="trim"), "test", base_dir=prepared_root))
    held = {s: PreparedData(prepared_root / "prepared").source(s).trim_vocab().size for s in ("en", "fr", "code")}
    assert 0 < max(held.values()) < 400
    assert trim.params.embedding == max(held.values()) * 32 and trim.table_source == max(held, key=held.get)
    assert plan_memory(tiny(tmp_path, variant="trim")).params.embedding == 400 * 32


# ---- (b) bytes by hand for a tiny config ------------------------------------------------------------------------

def test_tiny_config_bytes_by_hand(tmp_path):
    d, h, layers, own_vocab, global_vocab = 32, 64, 2, 320, 400
    body = layers * (4 * d * d + 3 * d * h + 2 * d) + d  # 20,640
    p = body + own_vocab * d  # SPEC-OPT: the source's own 320-token table
    plan = plan_memory(tiny(tmp_path))
    assert (plan.params.body, plan.params.total) == (body, p) == (20_640, 30_880)
    assert (plan.parameters, plan.gradients, plan.optimizer) == (4 * p, 4 * p, 8 * p)
    assert plan.ddp_buckets == plan.fsdp_gathered == 0
    assert plan.step_bytes == 16 * p + plan.activations
    assert plan.shared_state == 4 * body and plan.outer_momentum == 0  # SPEC-OPT shares no table; FedAvg

    ddp = plan_memory(tiny(tmp_path), ranks_per_source=2)
    assert (ddp.parameters, ddp.gradients, ddp.optimizer, ddp.ddp_buckets) == (4 * p, 4 * p, 8 * p, 4 * p)
    fsdp = plan_memory(tiny(tmp_path, data_parallel="fsdp"), ranks_per_source=2)
    assert (fsdp.parameters, fsdp.gradients, fsdp.optimizer, fsdp.ddp_buckets) == (2 * p, 2 * p, 4 * p, 0)
    block = 4 * d * d + 3 * d * h + 2 * d
    table_and_norm = own_vocab * d + d
    assert fsdp.fsdp_gathered == 4 * (2 * table_and_norm + 2 * block + block)

    glob = plan_memory(tiny(tmp_path, variant="glob", outer={"kind": "nesterov"}))
    assert glob.params.total == body + global_vocab * d
    assert glob.shared_state == glob.outer_momentum == 4 * (body + global_vocab * d)


def test_bad_shares_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="does not split into equal shares for 3 ranks"):
        plan_memory(tiny(tmp_path), ranks_per_source=3)


# ---- (c) activations ----------------------------------------------------------------------------------------------

def fp32_activations(b, T, d, h, heads, layers, vocab, kept):
    n = b * T
    return ((layers + 1) * n * d * 4 + kept * n * 4 * (11 * d + 4 * h + heads + 2) + n * 4 * (2 * d + 1)
            + 8 * n * vocab + 12 * n + 4 * vocab * d + 8 * b * (T + 1))


def test_checkpointing_and_micro_batches_lower_activations_by_the_formula(tmp_path):
    d, h, heads, layers, vocab, T = 32, 64, 2, 2, 320, 16
    whole = plan_memory(tiny(tmp_path, batch_size=4))
    assert whole.micro_batch == 4
    assert whole.activations == fp32_activations(4, T, d, h, heads, layers, vocab, kept=layers)
    ckpt = plan_memory(tiny(tmp_path, batch_size=4, activation_checkpointing=True))
    block = 4 * T * 4 * (11 * d + 4 * h + heads + 2)
    assert whole.activations - ckpt.activations == (layers - 1) * block  # one block's internals kept, not L
    micro = plan_memory(tiny(tmp_path, batch_size=4, micro_batch_size=1))
    assert micro.micro_batch == 1
    assert micro.activations == fp32_activations(1, T, d, h, heads, layers, vocab, kept=layers)
    shared = plan_memory(tiny(tmp_path, batch_size=4), ranks_per_source=2)  # each rank half of the batch
    assert shared.activations == fp32_activations(2, T, d, h, heads, layers, vocab, kept=layers)


def saved_for_backward(lm: LanguageModel, windows: torch.Tensor, precision: str) -> int:
    """Bytes of the distinct storages autograd keeps for the backward (parameters and buffers left out)."""
    skip = {t.untyped_storage().data_ptr() for t in itertools.chain(lm.parameters(), lm.buffers())}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            lm.loss(windows)
    return sum(seen.values())


@pytest.mark.parametrize("positions", ["rope", "learned"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_formula_is_what_autograd_keeps(tmp_path, positions, precision):
    cfg = tiny(tmp_path, {"d_model": 96, "n_heads": 3, "n_layers": 3, "d_mlp": 160, "positions": positions})
    vocab, b, T = 500, 3, 24
    lm = LanguageModel(Body(cfg.model), SourceEmbedding(vocab, cfg.model))
    a = activation_bytes(cfg.model, b, T, vocab, precision)
    # the plan adds what the backward makes while these are kept: the logits' gradient and the table's
    assert saved_for_backward(lm, torch.randint(0, vocab, (b, T + 1)), precision) == \
        a.total - 4 * b * T * vocab - a.table_grad


# ---- (d) the command ----------------------------------------------------------------------------------------------

def dept(*args):
    return subprocess.run([sys.executable, "-m", "dept.cli", "plan", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"}, timeout=120, cwd=REPO)


@pytest.mark.parametrize("gib", [80, 20])
def test_the_command_says_whether_it_fits_and_exits_accordingly(gib):
    plan = plan_memory(load_config(PAPER))  # train.device cuda: the step's memory on the device
    proc = dept(PAPER, "--device-memory", gib)
    last = proc.stdout.strip().splitlines()[-1]
    if plan.fits(gib * GiB):
        assert proc.returncode == 0 and last.startswith("fits"), proc.stdout + proc.stderr
    else:
        assert proc.returncode == 1, proc.stderr
        assert last == f"does not fit (needs {plan.total_bytes / GiB:,.2f} GiB, has {gib:,.2f} GiB)"
    assert f"{plan.total_bytes / GiB:,.2f}" in proc.stdout


def test_more_ranks_with_fsdp_need_less_per_rank():
    one = plan_memory(load_config(PAPER))
    eight = plan_memory(load_config(PAPER, ["train.data_parallel=fsdp"]), ranks_per_source=8)
    assert eight.total_bytes < one.total_bytes
    proc = dept(PAPER, "--device-memory", 80, "--ranks-per-source", 8, "train.data_parallel=fsdp")
    assert proc.returncode == 0 and f"{eight.total_bytes / GiB:,.2f}" in proc.stdout


@pytest.mark.parametrize("args", [("--ranks-per-source", 3), ("--ranks-per-source", 0),
                                  ("--device-memory", "-1"), ("train.ranks_per_source=x",)])
def test_bad_input_is_one_line(args):
    proc = dept(PAPER, "--device-memory", 80, *args) if "--device-memory" not in args else dept(PAPER, *args)
    assert proc.returncode not in (0, 1)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


# ---- (e) the plan against a measured step -------------------------------------------------------------------------

def test_a_measured_step_on_the_cpu_is_within_35_percent_of_the_plan():
    """d_model 512, 8 blocks, an 8,192-row table: 29M parameters, whose parameters, gradients and AdamW moments
    (466 MB) outweigh the activations of 4 × 256 tokens. Peak RSS growth of building the model and two real
    `train_step`s, in a fresh process (bench/plan_memory.py --measure; its docstring says how)."""
    overrides = ["train.device=cpu", "data.dir=/nonexistent/dept-plan-test", "model.d_model=512",
                 "model.n_layers=8", "model.n_heads=8", "model.max_seq_len=256", "train.seq_len=256",
                 "train.batch_size=4", "data.tokenizer.per_source.vocab_size=8192"]
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "plan_memory.py"), "--measure",
                           str(REPO / "configs" / "demo.yaml"), *overrides], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 28e6 < r["params"] < 31e6
    assert r["planned_bytes"] == plan_memory(load_config(REPO / "configs" / "demo.yaml", overrides)).step_bytes
    assert 0.65 <= r["measured_bytes"] / r["planned_bytes"] <= 1.35, r
