"""Data parallelism inside a source and a data-parallel STD: the layout, the batch shares, micro-batches and
activation checkpointing equal the plain step, and real torchrun runs (gloo, 4 and 2 ranks) equal one process
within float rounding, resume exactly, and count the gradient bytes their all-reduces really moved."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_tree
from test_torchrun import ENV, assert_same_tensors, finish, local_run, tensors, write_config

from dept.algorithm.source_store import SourceStore
from dept.algorithm.step import build_optimizer, train_step
from dept.algorithm.types import Mixture, Source
from dept.config import InnerOptConfig, ModelConfig, config_from_dict
from dept.data.prepared import PreparedData
from dept.data.stream import MixtureStream, WindowStream
from dept.engines.torchrun import Layout
from dept.errors import EngineError
from dept.eval.comms import body_parameters_of
from dept.model import Body, LanguageModel, SourceEmbedding
from dept.training import Trainer


def torchrun(nproc: int, *args, env=None):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "dept", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, **(env or {})}, start_new_session=True)


def rounds_of(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["event"] == "round"]


def assert_close_tensors(a: dict, b: dict, atol=1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=atol), (k, float((a[k] - b[k]).abs().max()))


# ---- the layout ------------------------------------------------------------------------------------------------

def test_layout_groups_consecutive_ranks_and_keeps_the_one_rank_rule():
    layout = Layout(world=4, per_source=2)
    assert layout.groups == 2
    assert [layout.members(Source("s", k)) for k in range(5)] == [[0, 1], [2, 3], [0, 1], [2, 3], [0, 1]]
    assert [layout.leader(Source("s", k)) for k in range(3)] == [0, 2, 0]
    assert layout.members(Mixture(("a", "b"))) == [0, 1, 2, 3] and layout.leader(Mixture(("a",))) == 0
    # one rank per source: source k on rank k mod P, as before groups existed
    assert [Layout(3).leader(Source("s", k)) for k in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(EngineError, match="ranks_per_source=3 does not divide the 4 ranks"):
        Layout(4, 3)


def test_unequal_batch_shares_are_refused_before_training(prepared_root, tmp_path):
    from dept.algorithm.participants import round_participants
    from dept.algorithm.variants import spec_of
    from dept.engines.torchrun import check_batch_shares

    cfg = config_from_dict(tiny_tree(prepared_root, batch_size=3, ranks_per_source=2), "t", prepared_root)
    with pytest.raises(EngineError, match="train.batch_size = 3 does not split into equal shares for the 2 ranks"):
        check_batch_shares(cfg, Layout(4, 2), round_participants(cfg, spec_of(cfg.train.variant)))
    std = config_from_dict(tiny_tree(prepared_root, variant="std", std_batch_size=6), "t", prepared_root)
    with pytest.raises(EngineError, match="std_batch_size.* = 6 does not split into equal shares for the 4 ranks"):
        check_batch_shares(std, Layout(4, 1), round_participants(std, spec_of(std.train.variant)))


# ---- batch shares ------------------------------------------------------------------------------------------------

def test_the_shares_of_a_batch_are_its_rows_and_every_share_moves_the_stream_alike():
    tokens = np.arange(1000, dtype=np.uint16)
    whole = WindowStream(tokens, 8, 6, seed=3, stream_id=1, name="s")
    parts = [WindowStream(tokens, 8, 6, seed=3, stream_id=1, name="s") for _ in range(3)]
    for _ in range(30):  # past an epoch (111 windows): the permutation turns over inside a share too
        batch = whole.next_batch()
        shares = [p.next_batch((i, 3)) for i, p in enumerate(parts)]
        assert torch.equal(torch.cat(shares), batch)
        assert all(p.position == whole.position for p in parts)

    def mixture():
        streams = [WindowStream(np.arange(k * 500, k * 500 + 400, dtype=np.uint16), 8, 1, 0, k, f"s{k}")
                   for k in range(3)]
        return MixtureStream(streams, np.array([1.0, 2.0, 3.0]), 8, seed=5)

    whole, parts = mixture(), [mixture(), mixture()]
    for _ in range(20):
        batch = whole.next_batch()
        assert torch.equal(torch.cat([p.next_batch((i, 2)) for i, p in enumerate(parts)]), batch)
        for p in parts:
            assert p.step == whole.step
            assert [s.position for s in p.streams] == [s.position for s in whole.streams]


# ---- micro-batches and activation checkpointing ----------------------------------------------------------------

def _lm(seed=0) -> LanguageModel:
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_seq_len=32)
    body, emb = Body(cfg), SourceEmbedding(50, cfg)
    g = torch.Generator().manual_seed(seed)
    body.reset_parameters(g)
    emb.reset_parameters(g)
    return LanguageModel(body, emb)


def _steps(lm: LanguageModel, batches, micro_batch=0, sgd=False) -> list[float]:
    # SGD moves each weight by its (clipped) gradient, so equal gradients show as equal weights; AdamW's
    # normalisation would magnify rounding in the tiny gradients
    opt = torch.optim.SGD(lm.parameters(), lr=0.5) if sgd else \
        build_optimizer(lm.parameters(), InnerOptConfig(lr=1e-2), torch.device("cpu"))
    return [float(train_step(lm, opt, b, 1.0, micro_batch=micro_batch)) for b in batches]


def test_micro_batches_give_the_whole_batch_step_within_rounding():
    batches = [torch.randint(0, 50, (6, 17), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    whole, micro = _lm(), _lm()
    losses_whole = _steps(whole, batches, sgd=True)
    losses_micro = _steps(micro, batches, micro_batch=4, sgd=True)  # passes of 4 and 2 sequences, weighted 4/6 and 2/6
    assert np.allclose(losses_micro, losses_whole, rtol=0, atol=1e-6)
    for (k, a), b in zip(whole.state_dict().items(), micro.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), k
    assert not torch.equal(whole.body.blocks[0].mlp.down.weight, _lm().body.blocks[0].mlp.down.weight)


def test_activation_checkpointing_gives_the_same_numbers():
    batches = [torch.randint(0, 50, (4, 17), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    plain, recomputed = _lm(), _lm()
    recomputed.body.checkpoint_blocks = True
    assert _steps(plain, batches) == _steps(recomputed, batches)
    for a, b in zip(plain.state_dict().values(), recomputed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_run_with_micro_batches_and_checkpointing_equals_the_plain_run(tiny):
    plain = tiny(variant="trim", rounds=2)
    levers = tiny({"run.dir": str(Path(plain.run_dir).parent / "levers")}, variant="trim", rounds=2,
                  micro_batch_size=1, activation_checkpointing=True)
    a = Trainer(plain, log=lambda *_: None).train()
    b = Trainer(levers, log=lambda *_: None).train()
    assert np.allclose([r.loss for r in a], [r.loss for r in b], rtol=0, atol=1e-5)
    assert plain.training_fingerprint() == levers.training_fingerprint()  # layout settings: a resume may change them


# ---- real torchrun runs ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def two_per_source(request, prepared_root, tmp_path_factory):
    """SPEC-OPT on 4 gloo ranks, 2 per source (2 groups: en and code on ranks 0-1, fr on ranks 2-3), the model
    replicated (DDP) or sharded (FSDP2) across each group's 2 ranks."""
    tmp = tmp_path_factory.mktemp(request.param)
    config = write_config(tmp, prepared_root, variant="spec_opt", rounds=4, sources_per_round=2, ranks_per_source=2,
                          data_parallel=request.param)
    code, out, err = finish(torchrun(4, "train", config))
    assert code == 0, err[-3000:]
    assert out.count("round 4/4") == 1
    return tmp, config


@pytest.mark.xdist_group("torchrun")
def test_two_ranks_per_source_equal_one_process_within_rounding(two_per_source):
    tmp, config = two_per_source
    local = local_run(config, tmp / "local")
    dist = tmp / "dist"
    assert_close_tensors(tensors(dist, "body.safetensors"), tensors(local.run_dir, "body.safetensors"))
    a, b = SourceStore(dist / "sources"), SourceStore(local.run_dir / "sources")
    for s in local.trained_sources:  # written by each group's leader only
        sa, sb = a.load(s.name, 4), b.load(s.name, 4)
        assert (sa is None) == (sb is None)
        if sa is not None:
            assert_close_tensors(sa.embedding, sb.embedding)
            assert sa.streams == sb.streams  # the whole batch moved the stream, whatever share a rank read
    ra, rb = (json.loads((p / "results.json").read_text())["results"] for p in (dist, local.run_dir))
    assert np.allclose([r["loss"] for r in ra], [r["loss"] for r in rb], rtol=0, atol=1e-5)

    # each rank handed its source's whole gradient (body + its own table, fp32) to the all-reduce at every step
    data = PreparedData(local.data_dir)
    body, d = body_parameters_of(local.model), local.model.d_model
    groups = {"en": 0, "fr": 1, "code": 0}
    for r in rounds_of(dist):
        expected = [0, 0, 0, 0]
        for name in r["sources"]:
            for rank in (2 * groups[name], 2 * groups[name] + 1):
                expected[rank] += (body + data.source(name).vocab_size("own") * d) * 4 * local.train.local_steps
        assert r["engine"]["grad_all_reduce_bytes"] == expected
        assert r["engine"]["ranks_per_source"] == 2
        assert r["train_loss"] == pytest.approx(next(x for x in rounds_of(local.run_dir)
                                                     if x["round"] == r["round"])["train_loss"], abs=1e-5)
    results = json.loads((dist / "results.json").read_text())
    assert results["within_source_bytes"] == 2 * sum(sum(r["engine"]["grad_all_reduce_bytes"])
                                                     for r in rounds_of(dist))


@pytest.mark.xdist_group("torchrun")
@pytest.mark.parametrize("two_per_source", ["fsdp"], indirect=True)  # DDP saves the same state, unsharded
def test_a_killed_two_per_source_run_resumes_to_the_uninterrupted_result_bitwise(two_per_source):
    """FSDP: AdamW state sharded across the group's ranks, gathered whole into the source's state file."""
    tmp, config = two_per_source
    run = tmp / "killed"
    # every rank dies at its 8th local step: inside round 3 for ranks 0-1 (en, code), later or never for 2-3
    code, _, _ = finish(torchrun(4, "train", config, f"run.dir={run}", env={"DEPT_KILL_AT": "step:8"}))
    assert code != 0
    assert 0 < len(rounds_of(run)) < 4
    code, _, err = finish(torchrun(4, "train", "--resume", run))
    assert code == 0, err[-3000:]
    for name in ("body.safetensors", "embedding.safetensors"):
        assert_same_tensors(tensors(run, name), tensors(tmp / "dist", name))
    a, b = SourceStore(run / "sources"), SourceStore(tmp / "dist" / "sources")
    for name in ("en", "fr", "code"):
        sa, sb = a.load(name, 4), b.load(name, 4)
        assert_same_tensors(sa.embedding, sb.embedding)
        assert_same_tensors(sa.optimizer["state"][0], sb.optimizer["state"][0])


@pytest.mark.xdist_group("torchrun")
def test_std_trains_data_parallel_and_counts_the_bytes_its_all_reduce_moved(prepared_root, tmp_path):
    config = write_config(tmp_path, prepared_root, variant="std", rounds=3, sources_per_round=2)
    code, out, err = finish(torchrun(2, "train", config))
    assert code == 0, err[-3000:]
    local = local_run(config, tmp_path / "local")
    dist = tmp_path / "dist"
    for name in ("body.safetensors", "embedding.safetensors"):  # each rank took half of every mixed batch
        assert_close_tensors(tensors(dist, name), tensors(local.run_dir, name))
    params = body_parameters_of(local.model) + PreparedData(local.data_dir).global_vocab_size * local.model.d_model
    per_step = params * 4  # every gradient, fp32, handed to the all-reduce by each rank at each step
    for r in rounds_of(dist):
        assert r["engine"]["grad_all_reduce_bytes"] == [per_step * local.train.local_steps] * 2
        assert r["std_bytes_per_source"] == per_step * local.train.local_steps  # the formula agrees
    results = json.loads((dist / "results.json").read_text())
    assert results["bytes_measured"] is True
    assert results["bytes_moved"] == 2 * 2 * per_step * 3 * 3 == results["std_equivalent_bytes"]
    assert json.loads((local.run_dir / "results.json").read_text())["bytes_measured"] is False
