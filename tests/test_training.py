"""The round loop end to end on a tiny prepared corpus: the method's invariants, not merely that it runs."""

import json

import pytest
import torch

from dept.algorithm.source_store import SourceStore
from dept.algorithm.variants import spec_of
from dept.checkpoint import latest_checkpoint, load_checkpoint
from dept.config import Variant
from dept.data.prepared import PreparedData
from dept.errors import CheckpointError
from dept.eval.comms import body_parameters_of, comms_row
from dept.training import Trainer


def metrics(cfg, event="round"):
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.mark.parametrize("variant", ["spec", "spec_opt"])
def test_spec_embedding_changes_only_in_rounds_where_sampled(tiny, variant):
    cfg = tiny(variant=variant, rounds=4, sources_per_round=1)
    trainer = Trainer(cfg, log=lambda *_: None)
    store = SourceStore(cfg.run_dir / "sources")
    snapshots = []
    original = trainer.engine.run_round

    def spy(assignments):
        updates = original(assignments)
        plan = assignments[0].plan
        tables = {}
        for s in cfg.trained_sources:
            state = store.load(s.name, plan.round + 1)
            tables[s.name] = None if state is None else state.embedding["tokens"].clone()
        snapshots.append((plan.keys, tables))
        assert all(u.embedding is None for u in updates), "SPEC must not send embeddings"
        return updates

    trainer.engine.run_round = spy
    cfg.train.keep_checkpoints = 10
    trainer.train()
    previous = {s.name: None for s in cfg.trained_sources}
    sampled_any = set()
    for sampled, tables in snapshots:
        for name, table in tables.items():
            if name in sampled:
                assert table is not None and (previous[name] is None or not torch.equal(table, previous[name]))
                sampled_any.add(name)
            else:
                assert (table is None and previous[name] is None) or torch.equal(table, previous[name])
        previous = tables
    assert len(sampled_any) >= 2


@pytest.mark.parametrize("variant", ["glob", "trim", "spec", "spec_opt", "std"])
def test_counted_bytes_equal_the_formula(tiny, variant):
    cfg = tiny(variant=variant, rounds=1)
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.train()
    record = metrics(cfg)[0]
    body = body_parameters_of(cfg.model)
    d = cfg.model.d_model
    data = PreparedData(cfg.data_dir)
    for name in record["sources"]:
        trim_rows = None if variant != "trim" else int(data.source(name).trim_vocab().size)
        row = comms_row(Variant(variant), body, d, data.global_vocab_size, 1, trim_rows=trim_rows)
        if variant == "std":  # the mixture worker moves the whole model once per round in this engine
            assert record["bytes_down"][name] == row.std_params_per_round * 4
        else:
            assert record["bytes_down"][name] == row.bytes_down
            assert record["bytes_up"][name] == row.bytes_up
        assert record["std_bytes_per_source"] == cfg.train.local_steps * row.std_params_per_round * 4


@pytest.mark.parametrize("variant", ["trim", "spec"])
def test_trim_and_spec_workers_hold_only_their_rows(tiny, variant):
    cfg = tiny(variant=variant, rounds=1)
    Trainer(cfg, log=lambda *_: None).train()
    record = metrics(cfg)[0]
    data = PreparedData(cfg.data_dir)
    for name in record["sources"]:
        rows = data.source(name).trim_vocab().size
        assert rows < data.global_vocab_size
        assert record["embedding_params_held"][name] == rows * cfg.model.d_model


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("variant,every,crash_round", [("spec_opt", 1, 2), ("trim", 1, 2), ("std", 1, 2),
                                                       ("spec", 2, 3), ("glob", 3, 2)])
def test_resumed_run_equals_uninterrupted(tiny, tmp_path, variant, every, crash_round):
    settings = {"train.checkpoint_every": every, "train.outer.kind": "nesterov"}
    straight = tiny(variant=variant, rounds=4, overrides={"run.dir": str(tmp_path / "a"), **settings})
    Trainer(straight, log=lambda *_: None).train()

    stopped = tiny(variant=variant, rounds=4, overrides={"run.dir": str(tmp_path / "b"), **settings})
    trainer = Trainer(stopped, log=lambda *_: None)
    inner = trainer.engine.run_round

    def crash_in_round_3(assignments):
        if assignments[0].plan.round == crash_round:
            inner(assignments)  # the round's source states are written, then the process dies
            raise Crash
        return inner(assignments)

    trainer.engine.run_round = crash_in_round_3
    with pytest.raises(Crash):
        trainer.train()
    with open(stopped.run_dir / "metrics.jsonl", "a") as f:
        f.write('{"event": "round", "round": 9, "trunc')  # a line cut short by the stop
    Trainer(stopped, log=lambda *_: None).train(resume=True)

    a = [(r["round"], r["train_loss"]) for r in metrics(straight)]
    b = [(r["round"], r["train_loss"]) for r in metrics(stopped)]
    assert a == b, variant
    sa, _ = load_checkpoint(latest_checkpoint(straight.run_dir))
    sb, _ = load_checkpoint(latest_checkpoint(stopped.run_dir))
    for k in sa.body:
        assert torch.equal(sa.body[k], sb.body[k])
    assert json.loads((straight.run_dir / "results.json").read_text()) == \
        json.loads((stopped.run_dir / "results.json").read_text())


def test_resume_with_another_config_is_refused(tiny):
    cfg = tiny(variant="spec", rounds=1)
    Trainer(cfg, log=lambda *_: None).train()
    other = tiny(variant="spec", rounds=1, overrides={"train.inner.lr": 0.1, "model.init_std": 0.03})
    with pytest.raises(CheckpointError, match="other values of model.init_std, train.inner.lr; a resumed run "
                                              "may change only run.dir"):
        Trainer(other, log=lambda *_: None).train(resume=True)
    fine = tiny(variant="spec", rounds=1, overrides={"train.threads": 1, "eval.max_bytes": 512,
                                                     "train.speed": "eager", "train.checkpoint_every": 2})
    Trainer(fine, log=lambda *_: None).train(resume=True)  # settings that leave the trajectory alone


def test_new_run_refuses_a_used_folder(tiny):
    cfg = tiny(variant="spec", rounds=1)
    Trainer(cfg, log=lambda *_: None).train()
    with pytest.raises(CheckpointError, match="already holds a run"):
        Trainer(cfg, log=lambda *_: None).train()


def test_corrupt_checkpoint_is_detected(tiny):
    cfg = tiny(variant="glob", rounds=1)
    Trainer(cfg, log=lambda *_: None).train()
    ckpt = latest_checkpoint(cfg.run_dir)
    data = bytearray((ckpt / "body.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "body.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("variant", ["glob", "trim", "spec", "spec_opt", "std"])
def test_every_variant_lowers_the_training_loss(tiny, variant):
    cfg = tiny(variant=variant, rounds=3, local_steps=8, sources_per_round=3,
               overrides={"train.inner.lr": 3e-3})
    Trainer(cfg, log=lambda *_: None).train()
    rounds = metrics(cfg)
    first = sum(rounds[0]["train_loss"].values()) / len(rounds[0]["train_loss"])
    last = sum(rounds[-1]["train_loss"].values()) / len(rounds[-1]["train_loss"])
    assert last < first


def test_spec_opt_evaluates_with_each_sources_own_vocabulary(tiny):
    cfg = tiny(variant="spec_opt", rounds=1, sources_per_round=3)
    results = Trainer(cfg, log=lambda *_: None).train()
    data = PreparedData(cfg.data_dir)
    for r in results:
        assert r.vocab_size == data.source(r.source).vocab_size("own")
        assert r.bytes > 0 and r.tokens > 0 and r.oov_tokens == 0


def test_act_resets_embeddings_at_its_interval(tiny):
    cfg = tiny(variant="act", rounds=2, local_steps=2, overrides={"train.act_reset_every": 2})
    trainer = Trainer(cfg, log=lambda *_: None)
    assert spec_of(cfg.train.variant).resets_embedding
    worker = trainer.engine.worker
    resets = []
    original = worker._forget_embedding
    worker._forget_embedding = lambda emb, opt, step: (resets.append(step), original(emb, opt, step))
    trainer.train()
    assert resets == [2]


def test_fedavg_round_sets_body_to_token_weighted_mean_of_local_bodies(tiny):
    cfg = tiny(variant="spec_opt", rounds=1, sources_per_round=3)
    trainer = Trainer(cfg, log=lambda *_: None)
    captured = []
    inner = trainer.engine.run_round

    def spy(assignments):
        updates = inner(assignments)
        captured.extend(updates)
        return updates

    trainer.engine.run_round = spy
    trainer.train()
    shared, _ = load_checkpoint(latest_checkpoint(cfg.run_dir))
    assert len(captured) == 3
    total = sum(u.tokens for u in captured)
    for name, value in shared.body.items():
        expected = sum(u.body[name].double() * (u.tokens / total) for u in captured)
        assert torch.allclose(value.double(), expected, atol=1e-6), name


def test_results_total_the_bytes_moved_against_std(tiny):
    cfg = tiny(variant="spec", rounds=2, sources_per_round=2)
    Trainer(cfg, log=lambda *_: None).train()
    results = json.loads((cfg.run_dir / "results.json").read_text())
    body_bytes = body_parameters_of(cfg.model) * 4
    assert results["bytes_moved"] == 2 * 2 * 2 * body_bytes  # rounds × sources × (down + up) × body
    record = metrics(cfg)[0]
    assert results["std_equivalent_bytes"] == 2 * 2 * 2 * record["std_bytes_per_source"]


def test_std_is_one_continuous_optimisation_whatever_keep_state(tiny, tmp_path):
    runs = []
    for keep in (True, False):
        cfg = tiny(variant="std", rounds=3, overrides={"run.dir": str(tmp_path / str(keep)),
                                                        "train.inner.keep_state": keep})
        Trainer(cfg, log=lambda *_: None).train()
        runs.append([r["train_loss"] for r in metrics(cfg)])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("variant", ["trim", "spec_opt"])
def test_learned_positions_follow_the_token_rule(tiny, variant):
    cfg = tiny(variant=variant, rounds=2, overrides={"model.positions": "learned"})
    trainer = Trainer(cfg, log=lambda *_: None)
    trainer.train()
    shared, _ = load_checkpoint(latest_checkpoint(cfg.run_dir))
    store = SourceStore(cfg.run_dir / "sources")
    trained = [s.name for s in cfg.trained_sources if store.load(s.name, 2) is not None]
    if variant == "trim":  # shared and averaged: the global embedding carries them
        assert shared.embedding["positions"].shape == (cfg.model.max_seq_len, cfg.model.d_model)
    else:  # local, like the token table, and never sent
        assert "positions" not in shared.embedding
        assert all("positions" in store.load(n, 2).embedding for n in trained)


def test_bf16_autocast_trains(tiny):
    cfg = tiny(variant="spec", rounds=1, overrides={"train.precision": "bf16"})
    results = Trainer(cfg, log=lambda *_: None).train()
    assert all(r.loss == r.loss and r.loss < 10 for r in results)


def test_stability_figures_match_the_checkpoints(tiny):
    """Per round: ||Δ|| of the outer step equals the distance between consecutive checkpoints' bodies (FedAvg),
    ||θ|| equals the checkpoint's body norm, and each source reports its pre-clip gradient norms."""
    cfg = tiny(variant="glob", rounds=3, sources_per_round=2, overrides={"train.keep_checkpoints": 5})
    Trainer(cfg, log=lambda *_: None).train()
    bodies = [load_checkpoint(p)[0].body for p in sorted((cfg.run_dir / "checkpoints").iterdir())]

    def norm(tensors):
        return sum(float(v.double().pow(2).sum()) for v in tensors.values()) ** 0.5

    rounds = metrics(cfg)
    for r in (1, 2):
        s = rounds[r]["stability"]
        diff = {k: bodies[r][k] - bodies[r - 1][k] for k in bodies[r]}
        assert s["pseudo_grad_norm"] == pytest.approx(norm(diff), rel=1e-4)
        assert s["body_norm"] == pytest.approx(norm(bodies[r]), rel=1e-5)
        assert set(s["grad_norm"]) == set(rounds[r]["sources"])
        for key in rounds[r]["sources"]:
            assert 0 < s["grad_norm"][key] <= s["grad_norm_max"][key]
            assert s["activation_norm"][key] > 0 and s["local_update_norm"][key] > 0


def test_metrics_and_results_are_standard_json_even_with_non_finite_values(tmp_path):
    from dept.atomic_io import write_json_atomic
    from dept.run_folder import RunFolder

    run = RunFolder(tmp_path)
    run.append_metrics({"event": "round", "stability": {"activation_norm": {"a": float("nan")}}, "x": float("inf")})
    write_json_atomic(tmp_path / "r.json", {"bpb": float("-inf"), "ok": [1.5, float("nan")]})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "event": "round", "stability": {"activation_norm": {"a": None}}, "x": None}
    assert json.loads((tmp_path / "r.json").read_text()) == {"bpb": None, "ok": [1.5, None]}


def test_resume_removes_what_killed_writes_left(tiny):
    from dept.training import Trainer

    cfg = tiny(variant="spec_opt", rounds=1)
    Trainer(cfg, log=lambda *_: None).train()
    source = next((cfg.run_dir / "sources").iterdir())
    leftovers = [source / ".r000002.safetensors.k3j2.tmp", cfg.run_dir / "checkpoints" / ".round_00002.tmp",
                 cfg.run_dir / ".metrics.jsonl.x1.tmp"]
    leftovers[1].mkdir()
    (leftovers[1] / "body.safetensors").write_bytes(b"half")
    for p in (leftovers[0], leftovers[2]):
        p.write_bytes(b"half-written")
    kept = sorted(p for p in cfg.run_dir.rglob("*") if p not in leftovers and leftovers[1] not in p.parents)
    logged = []
    Trainer(cfg, log=logged.append).train(resume=True)
    assert not any(p.exists() for p in leftovers)
    assert all(p.exists() for p in kept)
    assert sum("left by a write that was stopped" in line for line in logged) == 3


def test_long_rounds_report_progress_and_the_run_its_time_to_go(tiny):
    from dept.training import Trainer

    lines = []
    trainer = Trainer(tiny(variant="spec_opt", rounds=2), log=lines.append)
    trainer.engine.worker.progress_every_s = 0  # a line after every step
    trainer.train()
    steps = [line for line in lines if ": step " in line]
    assert len(steps) == 2 * 2 * 2  # rounds x sources per round x local steps but the last (the round line)
    assert "step 2/3, loss " in steps[1] and "tokens/s" in steps[1] and "s left of its round" in steps[0]
    assert any(line.startswith("round 1/2") and "to go)" in line for line in lines)
