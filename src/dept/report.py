"""Results tables: one run (per source) and several runs side by side (per source × variant)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.table import Table

from dept.errors import CheckpointError


def load_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no results.json (the run has not finished)")
    return json.loads(path.read_text())


def _fmt(x: float, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def run_table(results: dict, title: str = "") -> Table:
    table = Table(title=title or f"{results['variant']}: validation")
    for col in ("source", "loss", "perplexity", "bits/byte", "tokens", "bytes", "documents", "table rows",
                "outside table", "note"):
        table.add_column(col, justify="left" if col in ("source", "note") else "right")
    for r in results["results"]:
        name = r["source"] + (" (unseen)" if r["unseen"] else "")
        table.add_row(name, _fmt(r["loss"]), _fmt(r["perplexity"], 2), _fmt(r["bpb"]), str(r["tokens"]),
                      str(r["bytes"]), str(r["documents"]), str(r["vocab_size"]), str(r["oov_tokens"]),
                      r.get("note", ""))
    table.add_row("mean (trained sources)", _fmt(results["mean_loss"]), "", _fmt(results["mean_bpb"]),
                  "", "", "", "", "", "")
    if "mean_bpb_unseen" in results:
        table.add_row("mean (unseen sources)", _fmt(results.get("mean_loss_unseen")), "",
                      _fmt(results["mean_bpb_unseen"]), "", "", "", "", "", "")
    return table


def comparison_rows(runs: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Rows of per-source bits per byte, one column per variant, plus the means."""
    variants = list(runs)
    sources = [(r["source"], r["unseen"]) for r in next(iter(runs.values()))["results"]]
    header = ["source"] + variants
    rows = []
    for name, unseen in sources:
        row = [name + (" (unseen)" if unseen else "")]
        for v in variants:
            match = [r for r in runs[v]["results"] if r["source"] == name]
            row.append(_fmt(match[0]["bpb"]) if match else "n/a")
        rows.append(row)
    rows.append(["mean (trained sources)"] + [_fmt(runs[v]["mean_bpb"]) for v in variants])
    if any("mean_bpb_unseen" in runs[v] for v in variants):
        rows.append(["mean (unseen sources)"] + [_fmt(runs[v].get("mean_bpb_unseen")) for v in variants])
    if all("bytes_moved" in runs[v] for v in variants):
        rows.append(["MB communicated"] + [f"{runs[v]['bytes_moved'] / 1e6:,.1f}" for v in variants])
        rows.append(["less than STD"] + [f"{runs[v]['std_equivalent_bytes'] / runs[v]['bytes_moved']:,.1f}×"
                                          for v in variants])
    return header, rows


def comparison_table(runs: dict[str, dict]) -> Table:
    header, rows = comparison_rows(runs)
    table = Table(title="validation bits per byte (lower is better)")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def comparison_markdown(runs: dict[str, dict]) -> str:
    header, rows = comparison_rows(runs)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def consolidation_table(result: dict) -> Table:
    """Per-source bits per byte: the run's own figure, then the global-tokenizer model before and after."""
    plan = result["plan"]
    table = Table(title=f"consolidation of a {result['variant']} run: {plan['steps']} steps "
                        f"({plan['steps'] / plan['pretraining_steps']:.0%} of pre-training), bits per byte")
    for col in ("source", f"run ({result['variant']} tables)", "global table, start", "consolidated", "bytes"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for r in result["rows"]:
        table.add_row(r["source"] + (" (unseen)" if r["unseen"] else ""), _fmt(r["run_bpb"]),
                      _fmt(r["before_bpb"]), _fmt(r["after_bpb"]), str(r["bytes"]))
    table.add_row("mean (trained sources)", _fmt(result["mean_bpb_run"]), _fmt(result["mean_bpb_before"]),
                  _fmt(result["mean_bpb_after"]), "")
    return table


def plasticity_table(result: dict) -> Table:
    """Held-out bits per byte of each run's body along the adaptation, one column per run."""
    curves = result["curves"]
    s = result["settings"]
    table = Table(title=f"adapting to '{result['source']}': held-out bits per byte, body "
                        f"{'frozen' if s['freeze_body'] else 'trained'}")
    table.add_column("step", justify="right")
    for c in curves:
        table.add_column(c["label"] if c["label"] == c["variant"] else f"{c['label']} ({c['variant']})",
                         justify="right")
    for i, step in enumerate(curves[0]["steps"]):
        table.add_row(str(step), *[_fmt(c["bpb"][i]) for c in curves])
    return table


def finetune_table(result: dict) -> Table:
    """Eval metrics after each epoch (epoch 0: the untrained head) against the trivial baseline."""
    classification = result["task"] == "classification"
    keys = ("accuracy", "macro_f1") if classification else ("pearson", "spearman", "mse")
    table = Table(title=f"fine-tuning ({result['task']}): eval metrics per epoch")
    table.add_column("epoch", justify="right")
    table.add_column("train loss", justify="right")
    for k in keys:
        table.add_column(k, justify="right")
    for e in result["epochs"]:
        table.add_row(str(e["epoch"]), _fmt(e["train_loss"]), *[_fmt(e["metrics"].get(k)) for k in keys])
    base = result["baseline"]
    if classification:
        table.add_row(f"majority ({base['majority_label']})", "", _fmt(base["accuracy"]), "")
    else:
        table.add_row("training mean", "", "", "", _fmt(base["mse"]))
    return table
