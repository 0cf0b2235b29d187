"""Compressed uploads (train.compression): quantisation against hand-computed values, error feedback that loses
nothing over rounds, counted bytes against the formula, exact resume, and the same run through a wire engine."""

import json

import pytest
import torch
from safetensors.torch import load, save
from test_engine_seam import WireEngine as SeamWireEngine

from dept.algorithm.aggregator import Aggregator
from dept.algorithm.compression import SCHEMES, compress_delta, dequantize, quantize, scheme_of
from dept.algorithm.source_store import SourceStore
from dept.algorithm.types import (
    QuantizedTensors,
    SharedState,
    Source,
    TableRows,
    WholeTable,
    WorkerUpdate,
)
from dept.algorithm.variants import spec_of
from dept.checkpoint import latest_checkpoint, load_checkpoint
from dept.config import OuterOptConfig, Variant
from dept.data.prepared import PreparedData
from dept.eval.comms import body_scale_count_of, comms_row
from dept.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(*_):
    pass


def metrics(cfg, event="round"):
    lines = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def settings(compression: str, scale: str = "tensor") -> dict:
    return {"train.compression": compression, "train.compression_scale": scale}


# ---- quantisation ------------------------------------------------------------------------------------------------

def test_int8_per_tensor_by_hand():
    x = torch.tensor([[127.0, -3.4], [10.6, 0.0]])  # max|x| = 127: scale 1
    q = quantize({"w": x, "v": torch.tensor([0.5, -0.25])}, "int8-tensor")
    assert q.values["w"].dtype == torch.int8 and q.values["w"].tolist() == [[127, -3], [11, 0]]
    assert q.scales["w"].shape == (1, 1) and q.scales["w"].item() == 1.0
    assert q.values["v"].tolist() == [127, -64]  # -0.25 / (0.5/127) = -63.5: rounded to the even -64
    assert dequantize(q)["w"].tolist() == [[127.0, -3.0], [11.0, 0.0]]
    assert q.nbytes == 4 + 2 + 2 * 4  # int8 values, one fp32 scale per tensor


def test_int8_per_row_by_hand():
    x = torch.tensor([[127.0, -3.4], [2.54, -1.0], [0.0, 0.0]])
    q = quantize({"w": x}, "int8-row")
    assert q.scales["w"].shape == (3, 1)
    assert q.scales["w"][:, 0].tolist() == pytest.approx([1.0, 0.02, 0.0])
    assert q.values["w"].tolist() == [[127, -3], [127, -50], [0, 0]]  # an all-zero row stays zero
    assert torch.allclose(dequantize(q)["w"], torch.tensor([[127.0, -3.0], [2.54, -1.0], [0.0, 0.0]]))
    assert q.nbytes == 6 + 3 * 4


def test_bf16_by_hand():
    x = torch.tensor([1 + 2 ** -9, 1 + 3 * 2 ** -8, -2.0])
    q = quantize({"w": x}, "bf16")
    assert q.values["w"].dtype == torch.bfloat16 and not q.scales
    # 8 significant bits: 1 + 2^-9 rounds down to 1; 1 + 3·2^-8 is a tie, rounded to the even 1 + 2^-6
    assert dequantize(q)["w"].tolist() == [1.0, 1.015625, -2.0]
    assert q.nbytes == 3 * 2


@pytest.mark.parametrize("scheme", SCHEMES)
def test_error_feedback_loses_nothing_over_rounds(scheme):
    g = torch.Generator().manual_seed(0)
    shapes = {"w": (8, 16), "v": (16,), "t": (5, 3, 2)}
    residual, sent_sum, true_sum = {}, {}, {}
    for _ in range(6):
        start = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
        trained = {k: start[k] - 1e-3 * torch.randn(s, generator=g) for k, s in shapes.items()}
        sent, residual = compress_delta(start, trained, residual, scheme)
        for k, v in dequantize(sent).items():
            sent_sum[k] = sent_sum.get(k, 0) + v.double()
            true_sum[k] = true_sum.get(k, 0) + (start[k] - trained[k]).double()
        for k in shapes:  # what is left over is at most half a quantisation step
            step = sent.scales[k] if scheme != "bf16" else sent.values[k].float().abs() * 2 ** -7  # ≥ one bf16 ulp
            assert bool((residual[k].abs() <= step / 2 * (1 + 1e-5) + 1e-12).all()), k
    for k in shapes:
        assert torch.allclose(sent_sum[k], true_sum[k] - residual[k].double(), rtol=0, atol=1e-9), k


def test_scheme_names():
    assert scheme_of("none") is None and scheme_of("bf16", "row") == "bf16"
    assert scheme_of("int8") == "int8-tensor" and scheme_of("int8", "row") == "int8-row"


def test_the_aggregator_rebuilds_the_trained_body_from_a_compressed_update():
    start = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    trained = {"w": torch.tensor([[0.5, 2.25], [3.0, 5.0]])}
    for scheme in SCHEMES:
        sent, _ = compress_delta(start, trained, {}, scheme)
        shared = SharedState(body={k: v.clone() for k, v in start.items()})
        Aggregator(spec_of(Variant.SPEC), OuterOptConfig(kind="fedavg")).apply(
            shared, [WorkerUpdate(Source("a", 0), 0, sent, 10)])
        assert torch.equal(shared.body["w"], start["w"] - dequantize(sent)["w"])
        assert torch.allclose(shared.body["w"], trained["w"], atol=1e-2)


def test_fingerprint_knows_compression_and_none_leaves_it_as_before(tiny):
    base = tiny(variant="glob")
    fp = {c: tiny(variant="glob", overrides=settings(*c)).training_fingerprint()
          for c in [("none", "tensor"), ("none", "row"), ("bf16", "tensor"), ("bf16", "row"), ("int8", "tensor"),
                    ("int8", "row")]}
    assert fp[("none", "tensor")] == fp[("none", "row")] == base.training_fingerprint()
    assert fp[("bf16", "tensor")] == fp[("bf16", "row")]
    assert len({fp[("none", "tensor")], fp[("bf16", "tensor")], fp[("int8", "tensor")], fp[("int8", "row")]}) == 4


# ---- counted bytes -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,compression,scale", [("glob", "int8", "row"), ("trim", "int8", "tensor"),
                                                       ("spec_opt", "bf16", "tensor"), ("spec", "int8", "row")])
def test_counted_bytes_equal_the_formula_and_shrink(tiny, tmp_path, variant, compression, scale):
    cfg = tiny(variant=variant, rounds=1, overrides={"run.dir": str(tmp_path / "c"), **settings(compression, scale)})
    Trainer(cfg, log=quiet).train()
    record = metrics(cfg)[0]
    data = PreparedData(cfg.data_dir)
    from dept.eval.comms import body_parameters_of

    body, d, vocab = body_parameters_of(cfg.model), cfg.model.d_model, data.global_vocab_size
    scheme = scheme_of(compression, scale)
    for name in record["sources"]:
        rows = int(data.source(name).trim_vocab().size) if variant in ("trim", "spec") else None
        plain = comms_row(Variant(variant), body, d, vocab, 1, trim_rows=rows)
        row = comms_row(Variant(variant), body, d, vocab, 1, trim_rows=rows, compression=scheme,
                        body_scales=body_scale_count_of(cfg.model, scale))
        assert record["bytes_down"][name] == plain.bytes_down == row.bytes_down  # downloads stay fp32
        assert record["bytes_up"][name] == row.bytes_up
        ids = 4 * rows if variant == "trim" else 0
        ratio = (plain.bytes_up - ids) / (row.bytes_up - ids)
        if compression == "bf16":
            assert ratio == 2
        elif scale == "tensor":
            assert 3.98 < ratio < 4
        else:  # 4 bytes a row: with d_model 32, a table row's 32 bytes + 4
            assert 3.5 < ratio < 4


def test_body_scale_count_matches_the_module(tiny):
    from dept.model import Body

    cfg = tiny().model
    tensors = list(Body(cfg).state_dict().values())
    assert body_scale_count_of(cfg, "tensor") == len(tensors)
    assert body_scale_count_of(cfg, "row") == sum(t.shape[0] if t.ndim >= 2 else 1 for t in tensors)


def test_baselines_send_their_model_as_it_is(tiny, tmp_path):
    runs = []
    for c in ("none", "int8"):
        cfg = tiny(variant="std", rounds=1, overrides={"run.dir": str(tmp_path / c), **settings(c)})
        Trainer(cfg, log=quiet).train()
        runs.append(metrics(cfg)[0])
    assert runs[0]["bytes_up"] == runs[1]["bytes_up"] and runs[0]["train_loss"] == runs[1]["train_loss"]


# ---- the residual is the source's state ----------------------------------------------------------------------

class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("variant,compression,scale", [("glob", "int8", "row"), ("trim", "bf16", "tensor")])
def test_resumed_run_equals_uninterrupted(tiny, tmp_path, variant, compression, scale):
    common = {"train.outer.kind": "nesterov", **settings(compression, scale)}
    straight = tiny(variant=variant, rounds=4, overrides={"run.dir": str(tmp_path / "a"), **common})
    Trainer(straight, log=quiet).train()

    stopped = tiny(variant=variant, rounds=4, overrides={"run.dir": str(tmp_path / "b"), **common})
    trainer = Trainer(stopped, log=quiet)
    inner = trainer.engine.run_round

    def crash_in_round_3(assignments):
        if assignments[0].plan.round == 2:
            inner(assignments)  # the sources' states (residuals too) are written, then the process dies
            raise Crash
        return inner(assignments)

    trainer.engine.run_round = crash_in_round_3
    with pytest.raises(Crash):
        trainer.train()
    Trainer(stopped, log=quiet).train(resume=True)

    assert [r["train_loss"] for r in metrics(straight)] == [r["train_loss"] for r in metrics(stopped)]
    sa, _ = load_checkpoint(latest_checkpoint(straight.run_dir))
    sb, _ = load_checkpoint(latest_checkpoint(stopped.run_dir))
    for part in ("body", "embedding", "momentum"):
        assert all(torch.equal(getattr(sa, part)[k], getattr(sb, part)[k]) for k in getattr(sa, part))
    a, b = SourceStore(straight.run_dir / "sources"), SourceStore(stopped.run_dir / "sources")
    kept = 0
    for s in straight.trained_sources:
        ra, rb = a.load(s.name, 4), b.load(s.name, 4)
        if ra is not None:
            assert ra.residual.keys() == rb.residual.keys() and ra.residual
            assert all(torch.equal(ra.residual[k], rb.residual[k]) for k in ra.residual)
            assert any(k.startswith("table.") for k in ra.residual)
            kept += 1
    assert kept >= 2


def test_no_residual_is_kept_without_compression(tiny):
    cfg = tiny(variant="glob", rounds=1)
    Trainer(cfg, log=quiet).train()
    store = SourceStore(cfg.run_dir / "sources")
    states = [store.load(s.name, 1) for s in cfg.trained_sources]
    assert any(states) and all(s.residual == {} for s in states if s is not None)


# ---- through bytes -----------------------------------------------------------------------------------------------

def _pack(part: str, tensors) -> dict:
    if isinstance(tensors, QuantizedTensors):
        out = {f"{part}.{tensors.scheme}.{k}": v for k, v in tensors.values.items()}
        out.update({f"{part}.scale.{k}": v for k, v in tensors.scales.items()})
        return out
    return {f"{part}.plain.{k}": v for k, v in tensors.items()}


def _unpack(tensors: dict, part: str):
    mine = {k[len(part) + 1:]: v for k, v in tensors.items() if k.startswith(part + ".")}
    if not mine:
        return None
    kinds = {k.split(".", 1)[0] for k in mine} - {"scale"}
    (kind,) = kinds
    values = {k.split(".", 1)[1]: v for k, v in mine.items() if k.startswith(kind + ".")}
    if kind == "plain":
        return values
    scales = {k.split(".", 1)[1]: v for k, v in mine.items() if k.startswith("scale.")}
    return QuantizedTensors(kind, values, scales)


def encode(body, payload) -> bytes:
    tensors = _pack("body", body)
    if isinstance(payload, WholeTable):
        tensors.update(_pack("whole", payload.tensors))
    elif isinstance(payload, TableRows):
        tensors.update(_pack("rows", payload.tensors))
        if payload.ids is not None:
            tensors["ids"] = payload.ids
    return save({k: v.contiguous() for k, v in tensors.items()})


def decode(data: bytes):
    tensors = load(data)
    whole, rows = _unpack(tensors, "whole"), _unpack(tensors, "rows")
    payload = WholeTable(whole) if whole is not None else TableRows(rows, tensors.get("ids")) \
        if rows is not None else None
    return _unpack(tensors, "body"), payload


class WireEngine(SeamWireEngine):
    """tests/test_engine_seam.py's engine (everything through safetensors bytes, participants in reverse order,
    workers built from the config alone), sending the compressed parts."""

    encode = staticmethod(encode)
    decode = staticmethod(decode)


@pytest.mark.parametrize("variant,compression,scale", [("glob", "int8", "row"), ("trim", "int8", "tensor"),
                                                       ("spec_opt", "bf16", "tensor")])
def test_a_wire_engine_gives_the_local_result(tiny, tmp_path, variant, compression, scale):
    common = {"train.outer.kind": "nesterov", **settings(compression, scale)}
    local = tiny(variant=variant, rounds=3, overrides={"run.dir": str(tmp_path / "local"), **common})
    expected = Trainer(local, log=quiet).train()
    wired = tiny(variant=variant, rounds=3, overrides={"run.dir": str(tmp_path / "wire"), **common})
    engine = WireEngine(wired)
    got = Trainer(wired, engine=engine, log=quiet).train()

    assert [r["train_loss"] for r in metrics(local)] == [r["train_loss"] for r in metrics(wired)]
    a, _ = load_checkpoint(latest_checkpoint(local.run_dir))
    b, _ = load_checkpoint(latest_checkpoint(wired.run_dir))
    for part in ("body", "embedding", "momentum"):
        assert getattr(a, part).keys() == getattr(b, part).keys()
        assert all(torch.equal(getattr(a, part)[k], getattr(b, part)[k]) for k in getattr(a, part))
    assert [(r.source, r.loss) for r in expected] == [(r.source, r.loss) for r in got]
    for _, tensors_up, _, wire_up in engine.wire_bytes:  # the compressed tensors + one safetensors header
        assert 0 < wire_up - tensors_up < 8192


@pytest.mark.parametrize("scheme", SCHEMES)
def test_flower_messages_carry_compressed_updates(scheme):
    fm = pytest.importorskip("dept.engines.flower_messages")
    g = torch.Generator().manual_seed(1)
    start = {"a.weight": torch.randn(6, 4, generator=g), "norm": torch.randn(4, generator=g)}
    trained = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in start.items()}
    body, _ = compress_delta(start, trained, {}, scheme)
    table, _ = compress_delta({"tokens": torch.zeros(5, 4)}, {"tokens": torch.randn(5, 4, generator=g)}, {}, scheme)
    update = WorkerUpdate(Source("en", 0), 3, body, 100, TableRows(table, torch.arange(5, dtype=torch.int32)),
                          stats={"grad_norm": 1.0})
    content = fm.encode_update(update)
    back = fm.decode_update(content)
    for got, want in ((back.body, body), (back.embedding.tensors, table)):
        assert isinstance(got, QuantizedTensors) and got.scheme == scheme
        assert all(got.values[k].dtype == want.values[k].dtype and torch.equal(got.values[k], want.values[k])
                   for k in want.values)
        assert got.scales.keys() == want.scales.keys()
        assert all(torch.equal(got.scales[k], want.scales[k]) for k in want.scales)
    assert torch.equal(back.embedding.ids, update.embedding.ids)
    assert 0 < fm.array_bytes(content) - update.nbytes < 4096  # the compressed bytes + npy headers and names


def test_comms_command_scales_the_upload():
    from typer.testing import CliRunner

    from dept.cli import app

    out = CliRunner().invoke(app, ["comms", "--compression", "int8", "--compression-scale", "row"],
                             env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "MB up" in out.output and "int8-row" in out.output
    bad = CliRunner().invoke(app, ["comms", "--compression", "int4"])
    assert bad.exit_code != 0
