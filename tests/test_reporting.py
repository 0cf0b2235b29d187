"""`dept.reporting`: run folders read into families of seeds, the figures, the Markdown/HTML report, bad input."""

from __future__ import annotations

import ast
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from dept.config import config_from_dict, save_config
from dept.errors import DeptError
from dept.reporting import build_report, collect, plots
from dept.reporting.collect import MIXTURE, Spread
from dept.reporting.plots import FIGURES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASELINES = ("std", "act")


def fake_run(folder: Path, variant: str, seed: int, final: dict[str, float], unseen: tuple[str, ...] = (),
             rounds: int = 3, temperature: float = 0.3, stability: bool = True, results: bool = True,
             local_steps: int = 2, per_round: int = 0, excess=lambda r, rounds: 0.5 * (rounds - 1 - r)) -> Path:
    """A run folder written by hand: config.yaml, metrics.jsonl (a round and an eval event per round, bits per
    byte `final + excess(round, rounds)`, by default falling by 0.5 a round to `final`) and results.json. DEPT
    sources move 100·(i+1) bytes each way per round; STD's equivalent is 10,000 bytes per source and direction."""
    sources = list(final)
    trained = [s for s in sources if s not in unseen]
    tree = {
        "run": {"dir": str(folder), "seed": seed},
        "data": {"dir": str(folder.parent / "prepared"),
                 "sources": [{"name": s, "files": [f"{s}.jsonl"], "unseen": s in unseen} for s in sources]},
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
        "train": {"variant": variant, "rounds": rounds, "local_steps": local_steps, "std_temperature": temperature,
                  "sources_per_round": per_round, "batch_size": 2, "seq_len": 16},
    }
    cfg = config_from_dict(tree, "fixture", base_dir=folder.parent)
    folder.mkdir(parents=True)
    save_config(cfg, folder / "config.yaml")
    baseline = variant in BASELINES
    keys = [MIXTURE] if baseline else trained
    lines = []
    for r in range(rounds):
        moved = {k: 100 * (i + 1) for i, k in enumerate(keys)}
        record = {"event": "round", "round": r, "sources": keys, "train_loss": {k: 5.0 for k in keys},
                  "tokens": {k: 64 for k in keys}, "bytes_down": moved, "bytes_up": moved,
                  "std_bytes_per_source": 10_000, "embedding_params_held": {k: 1000 * (i + 1) for i, k in
                                                                           enumerate(keys)},
                  "elapsed_s": 0.1}
        if stability:
            record["stability"] = {"pseudo_grad_norm": 1.0 / (r + 1), "body_norm": 10.0 + r + seed,
                                   "grad_norm": {k: 2.0 + i for i, k in enumerate(keys)},
                                   "grad_norm_max": {k: 3.0 for k in keys},
                                   "activation_norm": {k: 4.0 for k in keys},
                                   "local_update_norm": {k: 0.5 for k in keys}}
        lines.append(record)
        lines.append(_eval_record(r, {s: v + excess(r, rounds) for s, v in final.items()}, unseen))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if results:
        last = _eval_record(rounds - 1, final, unseen)
        std = sum(2 * 10_000 * cfg.sources_per_round for _ in range(rounds))
        moved = std if baseline else rounds * 2 * sum(100 * (i + 1) for i in range(len(keys)))
        (folder / "results.json").write_text(json.dumps({
            "variant": variant, "results": last["results"], "mean_bpb": last["mean_bpb"], "mean_loss": 1.0,
            **({"mean_bpb_unseen": last["mean_bpb_unseen"]} if unseen else {}),
            "bytes_moved": moved, "std_equivalent_bytes": std}))
    return folder


def _eval_record(r: int, bpb: dict[str, float], unseen) -> dict:
    res = [{"source": s, "unseen": s in unseen, "loss": v * 0.7, "perplexity": math.exp(v * 0.7), "bpb": v,
            "tokens": 100, "bytes": 400, "documents": 3, "vocab_size": 300, "oov_tokens": 0, "note": ""}
           for s, v in bpb.items()]
    seen = [v for s, v in bpb.items() if s not in unseen]
    out = {"event": "eval", "round": r, "results": res, "mean_bpb": sum(seen) / len(seen)}
    if unseen:
        out["mean_bpb_unseen"] = statistics.mean(v for s, v in bpb.items() if s in unseen)
    return out


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    """SPEC-OPT with three seeds, GLOB with one, STD at τ 0.3 with two and at τ 1.0 with one; three trained
    sources and one unseen."""
    u = ("de",)
    return [
        fake_run(tmp_path / "so0", "spec_opt", 0, {"en": 2.0, "fr": 3.0, "zh": 4.0, "de": 5.0}, u),
        fake_run(tmp_path / "so1", "spec_opt", 1, {"en": 2.2, "fr": 3.1, "zh": 4.0, "de": 5.5}, u),
        fake_run(tmp_path / "so2", "spec_opt", 2, {"en": 2.4, "fr": 3.2, "zh": 4.0, "de": 6.0}, u),
        fake_run(tmp_path / "glob", "glob", 0, {"en": 2.5, "fr": 3.5, "zh": 4.5, "de": 5.0}, u),
        fake_run(tmp_path / "std0", "std", 0, {"en": 2.1, "fr": 3.0, "zh": 4.1, "de": 5.2}, u),
        fake_run(tmp_path / "std1", "std", 1, {"en": 2.3, "fr": 3.0, "zh": 4.3, "de": 5.4}, u),
        fake_run(tmp_path / "std_t1", "std", 0, {"en": 2.6, "fr": 3.6, "zh": 4.6, "de": 5.6}, u, temperature=1.0),
    ]


def test_families_group_seeds_and_spreads_match_hand_computed_values(runs):
    col = collect(runs, log=lambda *_: None)
    fam = {f.label: f for f in col.families}
    assert list(fam) == ["spec_opt", "glob", "std τ=0.3", "std τ=1"]
    assert fam["spec_opt"].seeds == [0, 1, 2] and fam["std τ=0.3"].seeds == [0, 1] and fam["glob"].n == 1
    en = fam["spec_opt"].final_score("en")
    assert (en.n, en.mean, en.std) == (3, pytest.approx(2.2), pytest.approx(0.2))  # sample std of 2.0, 2.2, 2.4
    # per-run trained means 3.0, 3.1, 3.2 -> 3.1 ± 0.1; unseen 5.0, 5.5, 6.0 -> 5.5 ± 0.5
    trained, unseen = fam["spec_opt"].final_mean_bpb(), fam["spec_opt"].final_mean_bpb(unseen=True)
    assert (trained.mean, trained.std) == (pytest.approx(3.1), pytest.approx(0.1))
    assert (unseen.mean, unseen.std) == (pytest.approx(5.5), pytest.approx(0.5))
    std = fam["std τ=0.3"].final_score("zh")
    assert (std.mean, std.std) == (pytest.approx(4.2), pytest.approx(math.sqrt(0.02)))
    # curves: round 1 of SPEC-OPT is final + 1.0 for each seed
    x, spreads = fam["spec_opt"].curve(lambda e: e.mean_bpb)
    assert x == [1, 2, 3] and spreads[0].mean == pytest.approx(4.1) and spreads[-1].mean == pytest.approx(3.1)
    # communication: 3 DEPT sources move 2·(100+200+300) a round; STD's equivalent 2·10,000·3
    assert fam["spec_opt"].total_bytes().mean == 3 * 1200
    assert fam["std τ=0.3"].total_bytes().mean == fam["std τ=0.3"].std_equivalent_bytes().mean == 3 * 60_000
    assert fam["glob"].embedding_params_held() == {"en": 1000, "fr": 2000, "zh": 3000}
    assert fam["std τ=1"].embedding_params_held() == {MIXTURE: 1000}
    assert col.sources == [("en", False), ("fr", False), ("zh", False), ("de", True)]


def test_same_variant_with_other_settings_is_another_family(tmp_path):
    a = fake_run(tmp_path / "a", "glob", 0, {"en": 2.0, "fr": 3.0}, rounds=3)
    b = fake_run(tmp_path / "b", "glob", 1, {"en": 2.0, "fr": 3.0}, rounds=4)
    c = fake_run(tmp_path / "c", "glob", 2, {"en": 2.0, "fr": 3.0}, rounds=4)
    col = collect([a, b, c], log=lambda *_: None)
    assert [(f.label, f.seeds) for f in col.families] == [("glob (rounds=3)", [0]), ("glob (rounds=4)", [1, 2])]


def test_spread_is_mean_and_sample_std():
    s = Spread.of([1.0, 2.0, 4.0, None, math.nan])
    assert (s.n, s.mean, s.std) == (3, pytest.approx(7 / 3), pytest.approx(statistics.stdev([1, 2, 4])))
    assert Spread.of([2.5]).fmt() == "2.5000" and Spread.of([]).fmt() == "n/a"
    assert Spread.of([2.0, 2.4]).fmt(3) == "2.200 ± 0.283"


def test_report_writes_every_figure_and_the_tables_hold_the_numbers(runs, tmp_path):
    adapted = tmp_path / "adapted"
    adapted.mkdir()
    (adapted / "adaptation.json").write_text(json.dumps({
        "source": "ru", "settings": {"freeze_body": False}, "curves": [
            {"label": "so0", "run": str(runs[0]), "variant": "spec_opt", "steps": [0, 5, 10], "bpb": [4.0, 3.0, 2.5]},
            {"label": "glob", "run": str(runs[3]), "variant": "glob", "steps": [0, 5, 10], "bpb": [4.1, 3.3, 2.9]}]}))
    out = tmp_path / "report"
    md_path = build_report(runs + [adapted], out, log=lambda *_: None)
    assert md_path == out / "report.md"
    names = {name for name, _ in FIGURES}
    assert {p.name for p in out.glob("*.png")} == names
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    md = md_path.read_text()
    html = (out / "report.html").read_text()
    bpb_section = md.split("## Bits per byte")[1].split("\n## ")[0]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in bpb_section.splitlines() if line.startswith("| ")}
    assert rows["source"] == "| source | spec_opt (n=3) | glob | std τ=0.3 (n=2) | std τ=1 |"
    assert rows["en"] == "| en | **2.2000 ± 0.2000** | 2.5000 | **2.2000 ± 0.1414** | 2.6000 |"
    assert rows["de (unseen)"] == "| de (unseen) | 5.5000 ± 0.5000 | **5.0000** | 5.3000 ± 0.1414 | 5.6000 |"
    assert rows["mean (trained sources)"].startswith("| mean (trained sources) | **3.1000 ± 0.1000** | 3.5000 |")
    assert "| so1 | spec_opt | spec_opt | 1 | 3/3 | 2 | 3 | finished |" in md.replace(str(tmp_path) + "/", "")
    assert "| spec_opt (n=3) | 3 | 1.20 kB | 3.60 kB | 180.00 kB | 50.0× | 1,000–3,000 |" in md
    assert "| std τ=0.3 (n=2) | 3 | 60.00 kB | 180.00 kB | 180.00 kB | 1.0× | 1,000 (one model) |" in md
    assert "| ru | so0 | spec_opt | trained | 4.0000 | 10 | 2.5000 |" in md
    for name in names:
        assert f"![{name}]({name})" in md and f'<img src="{name}"' in html
    assert "<strong>5.0000</strong>" in html and "std τ=0.3 (n=2)" in html and "http" not in html.split("<body>")[1]
    assert not list(tmp_path.glob(".report.*"))  # the temporary folder is gone


def test_report_replaces_an_older_one_and_refuses_a_foreign_folder(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "FIGURES", plots.FIGURES[:1])  # the pages are what this test reads
    out = tmp_path / "report"
    build_report(runs[:1], out, log=lambda *_: None)
    (out / "stale.png").write_bytes(b"x")
    build_report(runs[:2], out, log=lambda *_: None)
    assert not (out / "stale.png").exists() and "2 run(s)" in (out / "report.md").read_text()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DeptError, match="foreign"):
        build_report(runs[:1], foreign, log=lambda *_: None)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_older_and_unfinished_runs_are_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "FIGURES", tuple(f for f in plots.FIGURES if f[0] == "stability.png"))
    old = fake_run(tmp_path / "old", "trim", 0, {"en": 2.0, "fr": 3.0}, stability=False)
    cut = fake_run(tmp_path / "cut", "trim", 1, {"en": 2.2, "fr": 3.2}, stability=False, results=False)
    md = build_report([old, cut], tmp_path / "r", log=lambda *_: None).read_text()
    assert not (tmp_path / "r" / "stability.png").exists() and "did not record training-stability" in md
    assert "unfinished (3 of 3 rounds, last evaluated after round 3)" in md
    assert "| en | 2.1000 ± 0.1414 |" in md  # the unfinished run counts with its last evaluation


@pytest.mark.parametrize("make, match", [
    (lambda p: p.mkdir(), "not a run folder"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "not a run folder"),
    (lambda p: (p.mkdir(), (p / "adaptation.json").write_text("{}")), "not an adaptation result"),
    (lambda p: p.write_text("x"), "not a folder"),
])
def test_bad_input_is_refused_with_the_folder_named(tmp_path, runs, make, match):
    bad = tmp_path / "bad_one"
    make(bad)
    with pytest.raises(DeptError, match=match) as err:
        build_report([runs[0], bad], tmp_path / "r", log=lambda *_: None)
    assert "bad_one" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "r").exists()


def test_a_run_without_metrics_is_refused(tmp_path, runs):
    (runs[1] / "metrics.jsonl").unlink()
    with pytest.raises(DeptError, match="so1: no metrics"):
        build_report(runs[:2], tmp_path / "r", log=lambda *_: None)
    with pytest.raises(DeptError, match="at least one"):
        build_report([], tmp_path / "r", log=lambda *_: None)


def test_matplotlib_is_imported_only_to_draw():
    """No module of the package imports matplotlib at its top level (only inside the drawing functions)."""
    import dept.reporting as package

    for path in Path(package.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "matplotlib" for n in names), path.name


def test_missing_matplotlib_is_one_clear_line(runs, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DeptError, match=r"pip install 'dept\[plot\]'"):
        build_report(runs[:1], tmp_path / "r", log=lambda *_: None)
    assert not (tmp_path / "r").exists()
    col = collect(runs[:1], log=lambda *_: None)  # reading needs no matplotlib
    assert col.families[0].label == "spec_opt"
