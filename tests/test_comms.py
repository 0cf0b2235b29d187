"""Analytic communication and memory against the paper's reported figures."""

import pytest

from dept.config import ModelConfig, Variant
from dept.eval.comms import PAPER_MC4_1B7, body_parameters, body_parameters_of, comms_row


def test_papers_714x_for_the_171b_model():
    p = PAPER_MC4_1B7
    row = comms_row(Variant.SPEC_OPT, p["reported_body"], p["d_model"], p["vocab"], p["local_steps"],
                    own_vocab=p["own_vocab"])
    assert (p["reported_body"] + p["vocab"] * p["d_model"]) / 1e9 == pytest.approx(1.71, abs=0.005)
    assert round(row.reduction_vs_std) == 714
    # SPEC-OPT's 50,257-token table instead of 250,112: 512.2M -> 102.9M embedding parameters (-80%).
    glob = comms_row(Variant.GLOB, p["reported_body"], p["d_model"], p["vocab"], p["local_steps"])
    assert glob.embedding_params_held / 1e6 == pytest.approx(512.2, abs=0.1)
    assert row.embedding_params_held / 1e6 == pytest.approx(102.9, abs=0.1)
    assert 1 - row.embedding_params_held / glob.embedding_params_held == pytest.approx(0.80, abs=0.005)


def test_per_step_equivalents_of_the_12_block_model():
    body, d, vocab, n = 86_400_000, 768, 250_112, 500  # the paper's 86.4M body with mT5's vocabulary
    spec = comms_row(Variant.SPEC, body, d, vocab, n)
    glob = comms_row(Variant.GLOB, body, d, vocab, n)
    std = comms_row(Variant.STD, body, d, vocab, n)
    assert spec.params_up / n / 1e6 == pytest.approx(0.17, abs=0.005)
    assert glob.params_up / n / 1e6 == pytest.approx(0.56, abs=0.005)
    assert std.params_up / n / 1e6 == pytest.approx(278.5, abs=0.5)


def test_trim_sends_its_rows_and_their_ids():
    row = comms_row(Variant.TRIM, body=1000, d_model=4, global_vocab=100, local_steps=10, trim_rows=30)
    assert row.bytes_down == (1000 + 30 * 4) * 4
    assert row.bytes_up == (1000 + 30 * 4) * 4 + 30 * 4
    assert row.embedding_params_held == 120


def test_body_parameter_count_matches_the_module():
    cfg = ModelConfig(d_model=64, n_layers=3, n_heads=4)
    from dept.model import Body

    assert body_parameters_of(cfg) == sum(p.numel() for p in Body(cfg).parameters())
    assert body_parameters(24, 2048, 8192, "gelu", norms=False) == 12 * 24 * 2048**2


def test_spec_holds_the_same_rows_as_trim_and_sends_only_the_body():
    trim = comms_row(Variant.TRIM, body=1000, d_model=4, global_vocab=100, local_steps=10, trim_rows=30)
    spec = comms_row(Variant.SPEC, body=1000, d_model=4, global_vocab=100, local_steps=10, trim_rows=30)
    assert spec.embedding_params_held == trim.embedding_params_held == 30 * 4
    assert spec.bytes_down == spec.bytes_up == 1000 * 4


def test_baselines_move_every_parameter_at_every_step():
    for variant in (Variant.STD, Variant.ACT):
        row = comms_row(variant, body=1000, d_model=4, global_vocab=100, local_steps=10)
        assert row.params_up == row.params_down == 10 * (1000 + 100 * 4) == row.std_params_per_round


@pytest.mark.parametrize("variant,keep,compression", [("spec_opt", True, "int8"), ("glob", False, "bf16"),
                                                      ("spec", True, "none"), ("trim", True, "int8")])
def test_private_state_formula_equals_what_a_site_stores(tiny, tmp_path, variant, keep, compression):
    from safetensors import safe_open

    from dept.data.prepared import PreparedData
    from dept.eval.comms import private_state_bytes
    from dept.training import Trainer

    cfg = tiny(variant=variant, rounds=1, overrides={"run.dir": str(tmp_path / "r"), "train.inner.keep_state": keep,
                                                     "train.compression": compression})
    Trainer(cfg, log=lambda *_: None).train()
    data = PreparedData(cfg.data_dir)
    stored = list((cfg.run_dir / "sources").glob("*/r*.safetensors"))
    assert stored
    for path in stored:
        source = data.source(path.parent.name)
        rows = {"spec_opt": source.vocab_size("own"), "glob": data.global_vocab_size}.get(
            variant, int(source.trim_vocab().size))
        with safe_open(str(path), "pt") as f:  # every stored tensor but AdamW's scalar step counts
            stored_bytes = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys() if not k.endswith(".step"))
        formula = private_state_bytes(Variant(variant), body_parameters_of(cfg.model), cfg.model.d_model, rows,
                                      keep_optimizer=keep, compression=None if compression == "none" else compression)
        assert 4 * stored_bytes == formula > 0


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def test_link_time_at_line_rate():
    from dept.eval.comms import link_seconds

    assert link_seconds(10**9, 5 * 10**8, 8) == 1.0  # 8 Gbit down at 8 Gbit/s, the upload alongside
    assert link_seconds(0, 125 * 10**6, 1) == 1.0


# ---- one config's figure: `dept comms --config CONFIG key=value ...` -------------------------------------------

def _unprepared_config(tmp_path):
    import yaml
    from conftest import tiny_tree

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(tmp_path)))  # its data.dir was never prepared
    return path


def test_config_figure_honours_overrides_of_variant_and_sources_per_round(tmp_path):
    from dept.config import load_config
    from dept.eval.config_comms import config_comms

    path = _unprepared_config(tmp_path)
    plan = config_comms(load_config(path, ["train.variant=trim", "train.sources_per_round=2"]))
    # d_model 32, 2 blocks, SwiGLU hidden 64: 2·(4·32² + 3·32·64) + 5·32 = 20,640 body parameters. Unprepared,
    # a TRIM source is taken to hold all 400 global rows: (20,640 + 400·32)·4 bytes down, + 400 int32 ids up.
    assert (plan.variant, plan.sources, plan.sources_per_round, plan.measured) == (Variant.TRIM, 3, 2, False)
    assert set(plan.per_source) == {"en", "fr", "code"}  # the unseen source never trains
    assert {(r.bytes_down, r.bytes_up) for r in plan.per_source.values()} == {(133_760, 135_360)}
    assert plan.round_range() == (538_240, 538_240, 538_240)  # M = 2 sources, each way
    assert "TRIM, M = 2 of K = 3 sources a round, N = 3: 0.54 MB down + up" in plan.describe()[0]
    assert "estimated from the config" in plan.describe()[0]

    spec_opt = config_comms(load_config(path, ["train.sources_per_round=1"]))  # the file's own variant
    assert (spec_opt.variant, spec_opt.sources_per_round) == (Variant.SPEC_OPT, 1)
    assert spec_opt.round_range()[1] == 2 * 20_640 * 4  # the body each way, one source
    assert spec_opt.per_source["en"].embedding_params_held == 320 * 32  # its own 320-token table


def test_comms_command_takes_train_overrides(tmp_path):
    from typer.testing import CliRunner

    from dept.cli import app

    path = _unprepared_config(tmp_path)
    out = CliRunner().invoke(app, ["comms", "--config", str(path), "train.variant=trim",
                                   "train.sources_per_round=2"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "TRIM (config)" in out.output and "SPEC-OPT (config)" not in out.output
    assert "M = 2 of K = 3 sources a round" in out.output and "a formula from sizes" in out.output
    alone = CliRunner().invoke(app, ["comms", "train.variant=trim"])
    assert alone.exit_code != 0 and "go with --config" in str(alone.exception)


@pytest.mark.parametrize("variant,overrides", [
    ("trim", {}), ("trim", {"model.positions": "learned"}),
    ("glob", {"train.compression": "int8", "train.compression_scale": "row"}), ("std", {}),
])
def test_config_figure_equals_what_a_run_counts_on_prepared_data(tiny, variant, overrides):
    import json

    from dept.data.prepared import PreparedData
    from dept.eval.config_comms import config_comms
    from dept.training import Trainer

    cfg = tiny(variant=variant, rounds=1, sources_per_round=2, overrides=overrides)
    plan = config_comms(cfg)
    assert plan.measured and plan.sources_per_round == 2
    data = PreparedData(cfg.data_dir)
    assert plan.trim_rows == {n: int(data.source(n).trim_vocab().size) for n in plan.per_source}
    Trainer(cfg, log=lambda *_: None).train()
    record = next(r for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
                  if r["event"] == "round")
    if plan.baseline:  # one mixture participant; the figure is the all-reduce a run records for each source
        assert {r.bytes_up for r in plan.per_source.values()} == {record["std_bytes_per_source"]}
        return
    for name in record["sources"]:
        assert (record["bytes_down"][name], record["bytes_up"][name]) == (plan.per_source[name].bytes_down,
                                                                          plan.per_source[name].bytes_up)
    down, up = plan.round_bytes(record["sources"])
    assert (down, up) == (sum(record["bytes_down"].values()), sum(record["bytes_up"].values()))
    least, _, most = plan.round_range()
    assert least <= down + up <= most
