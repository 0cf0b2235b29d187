"""The report's figures, drawn with matplotlib's object API (no pyplot, no global backend switch).

Every function takes the collected runs and a path, draws one figure there and returns a one-sentence caption, or
None where the runs hold nothing to draw. matplotlib is imported when a figure is drawn, not before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from dept.errors import DeptError
from dept.reporting.collect import MIXTURE, Collection, Family, Spread, curve_name

FIGSIZE = (7.0, 4.2)
DPI = 120
MAX_SOURCE_PANELS = 16  # more sources than this: no small multiples (the table holds them)


def require_matplotlib() -> None:
    """One clear line where matplotlib is missing."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise DeptError("the report's figures need matplotlib: pip install 'dept[plot]'") from None


def _figure_class():
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure


def _ticker():
    import matplotlib.ticker as ticker

    return ticker


def _colormap(name: str):
    from matplotlib import colormaps

    return colormaps[name]


def family_colors(col: Collection) -> dict[str, tuple]:
    """One colour per family, the same in every figure."""
    cmap = _colormap("tab10" if len(col.families) <= 10 else "tab20")
    return {f.label: cmap(i % cmap.N) for i, f in enumerate(col.families)}


def _new(nrows: int = 1, ncols: int = 1, figsize=FIGSIZE, **kw):
    Figure = _figure_class()
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=DPI)


def _label(f: Family) -> str:
    return f"{f.label} (n={f.n})" if f.n > 1 else f.label


def _line(ax, x: list[int], spreads: list[Spread], color, label: str | None, band: bool = True,
          **kw) -> None:
    y = [s.mean for s in spreads]
    marker = "o" if len(x) <= 12 else None
    ax.plot(x, y, color=color, label=label, marker=marker, markersize=3.5, linewidth=1.6, **kw)
    if band and any(s.n > 1 for s in spreads):
        lo = [s.mean - (s.std if s.n > 1 else 0.0) for s in spreads]
        hi = [s.mean + (s.std if s.n > 1 else 0.0) for s in spreads]
        ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)


def _integer_x(ax) -> None:
    ax.xaxis.set_major_locator(_ticker().MaxNLocator(integer=True))


def _legend_below(fig, axes, ncol_max: int = 4) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(ncol_max, len(labels)), fontsize=8,
                   frameon=False)


def _log_bytes_axis(axis, lo: float, hi: float) -> None:
    """Byte units on a log axis; a narrow one (under two powers of ten) labels 2× and 5× ticks too."""
    ticker = _ticker()
    axis.set_major_formatter(ticker.EngFormatter(unit="B"))
    if lo > 0 and hi / lo < 100:
        axis.set_minor_locator(ticker.LogLocator(base=10, subs=(2.0, 5.0)))
        axis.set_minor_formatter(ticker.EngFormatter(unit="B"))
        axis.set_tick_params(which="minor", labelsize=8)
    else:
        axis.set_minor_formatter(ticker.NullFormatter())


def _maybe_log(ax, values: list[float], ratio: float = 30.0) -> None:
    vals = [v for v in values if v is not None and not math.isnan(v) and v > 0]
    if vals and max(vals) / min(vals) > ratio:
        ax.set_yscale("log")


# ---- 1. bits per byte over rounds ---------------------------------------------------------------------------------

def _evaluated_more_than_once(col: Collection) -> list[Family]:
    families = [f for f in col.families if any(r.evals for r in f.runs)]
    return families if any(len(r.evals) > 1 for f in families for r in f.runs) else []


def bpb_curves(col: Collection, path: Path) -> str | None:
    families = _evaluated_more_than_once(col)
    if not families:
        return None  # one evaluation per run: the final figure and the table say it all
    colors = family_colors(col)
    any_unseen = any(e.mean_bpb_unseen is not None for f in families for r in f.runs for e in r.evals)
    fig, axes = _new(1, 2 if any_unseen else 1, sharey=False)
    panels = [(axes[0][0], False, "trained sources")] + ([(axes[0][1], True, "unseen sources")] if any_unseen else [])
    seeds = any(f.n > 1 for f in families)
    for ax, unseen, title in panels:
        for f in families:
            x, spreads = f.curve(lambda e, u=unseen: e.mean_bpb_unseen if u else e.mean_bpb)
            if x:
                _line(ax, x, spreads, colors[f.label], _label(f))
        ax.set_title(f"mean over {title}", fontsize=10)
        ax.set_xlabel("round (outer step)")
        ax.set_ylabel("validation bits per byte")
        ax.grid(alpha=0.3)
        _integer_x(ax)
    _legend_below(fig, [a for a, _, _ in panels])
    fig.suptitle("Validation bits per byte over training (lower is better)"
                 + (": mean ± std over seeds" if seeds else ""), fontsize=11)
    _save(fig, path)
    return ("Mean validation bits per byte of the trained" + (" and of the unseen" if any_unseen else "")
            + " sources after each evaluated round, one line per family"
            + (" (band: ± one standard deviation over seeds)." if seeds else "."))


def bpb_per_source(col: Collection, path: Path) -> str | None:
    families = _evaluated_more_than_once(col)
    sources = col.sources
    if not families or not sources or len(sources) > MAX_SOURCE_PANELS:
        return None
    colors = family_colors(col)
    ncols = min(4, len(sources))
    nrows = math.ceil(len(sources) / ncols)
    fig, axes = _new(nrows, ncols, figsize=(max(7.0, 2.3 * ncols), 1.9 * nrows + 1.0), sharex=True)
    flat = [ax for row in axes for ax in row]
    for ax, (name, unseen) in zip(flat, sources, strict=False):
        for f in families:
            x, spreads = f.curve(lambda e, s=name: e.scores[s].bpb if s in e.scores else None)
            if x:
                _line(ax, x, spreads, colors[f.label], _label(f))
        ax.set_title(name + (" (unseen)" if unseen else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        _integer_x(ax)
    for ax in flat[len(sources):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("bits per byte", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("round", fontsize=8)
    _legend_below(fig, flat)
    fig.suptitle("Validation bits per byte per source over training", fontsize=11)
    _save(fig, path)
    return "The same curves for each source on its own (one panel per source, one line per family)."


# ---- 2. final bits per byte ---------------------------------------------------------------------------------------

def final_bpb(col: Collection, path: Path) -> str | None:
    families = [f for f in col.families if any(r.final is not None for r in f.runs)]
    if not families:
        return None
    trained = [f.final_mean_bpb() for f in families]
    unseen = [f.final_mean_bpb(unseen=True) for f in families]
    has_unseen = any(s.n for s in unseen)
    fig, axes = _new()
    ax = axes[0][0]
    width = 0.38 if has_unseen else 0.6
    xs = list(range(len(families)))
    groups = [("trained sources", trained, -width / 2 if has_unseen else 0.0, "#4C72B0", None)]
    if has_unseen:
        groups.append(("unseen sources", unseen, width / 2, "#DD8452", "//"))
    top = 0.0
    for label, spreads, offset, color, hatch in groups:
        pos = [x + offset for x in xs]
        means = [s.mean if s.n else 0.0 for s in spreads]
        errs = [s.std if s.n > 1 else 0.0 for s in spreads]
        ax.bar(pos, means, width, color=color, hatch=hatch, edgecolor="white", label=label)
        spread = [(p, s) for p, s in zip(pos, spreads, strict=True) if s.n > 1]
        if spread:
            ax.errorbar([p for p, _ in spread], [s.mean for _, s in spread], yerr=[s.std for _, s in spread],
                        fmt="none", ecolor="black", elinewidth=1.0, capsize=3)
        for p, s, e in zip(pos, spreads, errs, strict=True):
            if s.n:
                ax.text(p, s.mean + e, f"{s.mean:.3f}", ha="center", va="bottom", fontsize=7)
                top = max(top, s.mean + e)
    ax.set_xticks(xs, [f"{f.label}\nn={f.n}" for f in families], fontsize=8,
                  rotation=20 if len(families) > 5 else 0)
    ax.set_ylabel("final validation bits per byte")
    ax.set_ylim(0, top * 1.22 if top else 1)
    ax.set_title("Final bits per byte per family (lower is better)"
                 + ("; mean ± std over n seeds" if any(f.n > 1 for f in families) else ""), fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncol=2, framealpha=0.9)
    _save(fig, path)
    return ("Final mean bits per byte of each family on its trained" + (" and unseen" if has_unseen else "")
            + " sources; error bars are ± one standard deviation over the n seeds written under each family.")


# ---- 3. communication ---------------------------------------------------------------------------------------------

def communication(col: Collection, path: Path) -> str | None:
    families = [f for f in col.families if any(r.rounds for r in f.runs)]
    if not families:
        return None
    colors = family_colors(col)
    fig, axes = _new(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})
    ax, bx = axes[0]
    std_series = {}
    for f in families:
        x, spreads = f.round_series(lambda p: p.bytes_moved)
        _line(ax, x, spreads, colors[f.label], _label(f), band=False)
        sx, ss = f.round_series(lambda p: p.std_equivalent)
        std_series[(tuple(sx), tuple(round(s.mean) for s in ss))] = (sx, ss)
    for i, (sx, ss) in enumerate(std_series.values()):
        ax.plot(sx, [s.mean for s in ss], color="black", linestyle="--", linewidth=1.1,
                label="STD equivalent" if i == 0 else None)
    ax.set_yscale("log")
    _log_bytes_axis(ax.yaxis, *ax.get_ylim())
    ax.set_xlabel("round (outer step)")
    ax.set_ylabel("bytes moved per round (log scale)")
    ax.set_title("per round, all sampled sources", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    _integer_x(ax)
    totals = [f.total_bytes() for f in families]
    stds = [f.std_equivalent_bytes() for f in families]
    ys = list(range(len(families)))
    bx.barh(ys, [t.mean for t in totals], 0.6, color=[colors[f.label] for f in families])
    bx.scatter([s.mean for s in stds], ys, marker="|", s=260, color="black", linewidths=2, zorder=3)
    for y, t, s in zip(ys, totals, stds, strict=True):
        if t.mean > 0:
            ratio = s.mean / t.mean
            bx.text(t.mean * 1.2, y, f"{ratio:,.0f}× less" if ratio >= 1.5 else "= STD", ha="left",
                    va="center", fontsize=7)
    bx.set_xscale("log")
    bx.set_yticks(ys, [f.label for f in families], fontsize=8)
    bx.invert_yaxis()
    bx.set_xlabel("bytes moved in all (log scale)")
    bx.set_title("whole run; black: STD equivalent", fontsize=10)
    bx.grid(axis="x", alpha=0.3, which="major")
    lo = min([t.mean for t in totals if t.mean > 0] + [s.mean for s in stds if s.mean > 0], default=1)
    hi = max([t.mean for t in totals] + [s.mean for s in stds], default=10)
    bx.set_xlim(lo / 4, hi * 12)
    _log_bytes_axis(bx.xaxis, lo / 4, hi * 12)
    _legend_below(fig, [ax])
    fig.suptitle("Communication: bytes sent and received (log scale)", fontsize=11)
    _save(fig, path)
    return ("Bytes moved (down + up) per round and over the whole run per family, on a log scale, against what "
            "data-parallel STD would move for the same rounds (dashed line, black ticks).")


# ---- 4. memory ----------------------------------------------------------------------------------------------------

def memory(col: Collection, path: Path) -> str | None:
    held = {f.label: f.embedding_params_held() for f in col.families}
    held = {k: v for k, v in held.items() if v}
    if not held:
        return None
    ticker = _ticker()
    colors = family_colors(col)
    sources = [s for s, unseen in col.sources if not unseen and any(s in v for v in held.values())]
    fig, axes = _new()
    ax = axes[0][0]
    markers = "osD^vP*Xh<>"
    per_source = [label for label, v in held.items() if any(k != MIXTURE for k in v)]
    shared = [label for label, v in held.items() if MIXTURE in v]
    span = 0.6
    values = []
    for i, label in enumerate(per_source):
        off = (i - (len(per_source) - 1) / 2) * (span / max(1, len(per_source)))
        pts = [(j + off, held[label][s]) for j, s in enumerate(sources) if s in held[label]]
        values += [v for _, v in pts]
        ax.scatter([p for p, _ in pts], [v for _, v in pts], color=colors[label], marker=markers[i % len(markers)],
                   s=28, label=label, zorder=3)
    for label in shared:
        v = held[label][MIXTURE]
        values.append(v)
        ax.axhline(v, color=colors[label], linestyle="--", linewidth=1.3, label=f"{label} (one shared model)")
    ax.set_xticks(range(len(sources)), sources, rotation=30 if len(sources) > 4 else 0, ha="right"
                  if len(sources) > 4 else "center", fontsize=8)
    if not sources:
        ax.set_xticks([])
    _maybe_log(ax, values, ratio=20)
    if ax.get_yscale() == "linear":
        ax.set_ylim(0, max(values) * 1.15)
    ax.yaxis.set_major_formatter(ticker.EngFormatter())
    ax.set_xlim(-0.6, max(len(sources) - 0.4, 0.6))
    ax.set_ylabel("embedding parameters held")
    ax.set_xlabel("source (its worker)")
    ax.set_title("Embedding parameters each worker holds, per source", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    _legend_below(fig, [ax])
    _save(fig, path)
    return ("Embedding parameters (table rows × d_model, plus learned positions) that each source's worker holds, "
            "per family; STD/ACT train one model on the mixture, drawn as a dashed line.")


# ---- 5. stability -------------------------------------------------------------------------------------------------

STABILITY_PANELS = (
    ("body_norm", "body parameter norm", "L2 norm"),
    ("pseudo_grad_norm", "pseudo-gradient norm (outer step)", "L2 norm"),
    ("grad_norm", "gradient norm before clipping,\nmean over sources", "L2 norm"),
    ("activation_norm", "last block's output norm per token,\nmean over sources", "L2 norm"),
)


def stability(col: Collection, path: Path) -> str | None:
    families = [f for f in col.families if any(p.stability for r in f.runs for p in r.rounds)]
    if not families:
        return None
    colors = family_colors(col)
    fig, axes = _new(2, 2, figsize=(7.0, 5.2), sharex=True)
    flat = [ax for row in axes for ax in row]
    for ax, (key, title, unit) in zip(flat, STABILITY_PANELS, strict=True):
        values = []
        for f in families:
            x, spreads = f.round_series(lambda p, k=key: (p.stability or {}).get(k))
            if x:
                _line(ax, x, spreads, colors[f.label], _label(f), band=False)
                values += [s.mean for s in spreads]
        _maybe_log(ax, values)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        _integer_x(ax)
    for ax in axes[-1]:
        ax.set_xlabel("round (outer step)", fontsize=8)
    _legend_below(fig, flat)
    fig.suptitle("Training stability per round" + (" (mean over seeds)" if any(f.n > 1 for f in families) else ""),
                 fontsize=11)
    _save(fig, path)
    skipped = [r.path.name for r in col.runs if r.rounds and not any(p.stability for p in r.rounds)]
    return ("Training health per round, one line per family: the body's parameter norm, the outer step's "
            "pseudo-gradient norm, and the sources' mean pre-clipping gradient norm and activation norm"
            + (f" (not recorded by {len(skipped)} older run(s))." if skipped else "."))


# ---- 6. plasticity ------------------------------------------------------------------------------------------------

def plasticity(col: Collection, path: Path) -> str | None:
    adaptations = [a for a in col.adaptations if a.curves]
    if not adaptations:
        return None
    colors = dict(family_colors(col))
    ncols = min(3, len(adaptations))
    nrows = math.ceil(len(adaptations) / ncols)
    fig, axes = _new(nrows, ncols, figsize=(max(7.0, 3.4 * ncols), 3.6 * nrows + 0.8))
    flat = [ax for row in axes for ax in row]
    unmatched = iter(_colormap("Dark2").colors)
    for ax, a in zip(flat, adaptations, strict=False):
        groups: dict[str, list] = {}
        for c in a.curves:  # a run of this report: its family (seeds pooled); another run: its own line
            groups.setdefault(col.family_of(c.run) or curve_name(c), []).append(c)
        for label, curves in groups.items():
            if label not in colors:
                colors[label] = next(unmatched, (0.3, 0.3, 0.3, 1.0))
            steps = sorted({s for c in curves for s in c.steps})
            spreads = [Spread.of(c.bpb[c.steps.index(s)] for c in curves if s in c.steps) for s in steps]
            _line(ax, steps, spreads, colors[label], f"{label} (n={len(curves)})" if len(curves) > 1 else label)
        ax.set_title(f"new source '{a.source}', body {'frozen' if a.freeze_body else 'trained'}", fontsize=9)
        ax.set_xlabel("adaptation step")
        ax.set_ylabel("held-out bits per byte")
        ax.grid(alpha=0.3)
    for ax in flat[len(adaptations):]:
        ax.set_visible(False)
    _legend_below(fig, flat)
    fig.suptitle("Plasticity: a fresh embedding for a new source on each pre-trained body", fontsize=11)
    _save(fig, path)
    return ("Held-out bits per byte of a source no run was trained on while a fresh embedding (and the body, "
            "unless frozen) adapts to it, one line per pre-trained body.")


FIGURES: tuple[tuple[str, Callable[[Collection, Path], str | None]], ...] = (
    ("bpb_curves.png", bpb_curves),
    ("bpb_per_source.png", bpb_per_source),
    ("final_bpb.png", final_bpb),
    ("communication.png", communication),
    ("memory.png", memory),
    ("stability.png", stability),
    ("plasticity.png", plasticity),
)


def draw_all(col: Collection, folder: Path, log=print) -> list[tuple[str, str]]:
    """Every figure the runs allow, as (file name, caption)."""
    require_matplotlib()  # one clear error before any work when matplotlib is missing
    drawn = []
    for name, draw in FIGURES:
        caption = draw(col, folder / name)
        if caption is not None:
            drawn.append((name, caption))
            log(f"  {name}")
    return drawn
