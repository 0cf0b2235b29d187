"""The report's text: sections of paragraphs, tables and figures, rendered as Markdown and as self-contained HTML.

The HTML holds its own small stylesheet and refers to the figures by relative path (they sit beside it), so the
report folder can be moved or served as it is. Only the standard library is used (`html.escape`).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dept.reporting.collect import MIXTURE, Collection, Family, RunRecord, Spread, curve_name, display_path


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align: str = ""  # one letter per column: l (text) or r (numbers); default: the first l, the others r

    def is_number(self, i: int) -> bool:
        align = self.align or "l" + "r" * (len(self.header) - 1)
        return align[i] == "r"


@dataclass
class Image:
    file: str
    caption: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph), Table or Image


# ---- formatting ---------------------------------------------------------------------------------------------------

def fmt_bytes(n: float) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "n/a"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} B"


def fmt_spread_bytes(s: Spread) -> str:
    if s.n == 0:
        return "n/a"
    return fmt_bytes(s.mean) + (f" ± {fmt_bytes(s.std)}" if s.n > 1 and s.std > 0 else "")


def family_header(f: Family) -> str:
    return f"{f.label} (n={f.n})" if f.n > 1 else f.label


# ---- the sections -------------------------------------------------------------------------------------------------

def _status(r: RunRecord) -> str:
    if r.finished:
        return "finished"
    last = f", last evaluated after round {r.evals[-1].round + 1}" if r.evals else ", not evaluated yet"
    return f"unfinished ({r.rounds_done} of {r.rounds_planned} rounds{last})"


def runs_section(col: Collection) -> Section:
    rows = [[display_path(r.path), r.family, r.variant, str(r.seed), f"{r.rounds_done}/{r.rounds_planned}",
             str(r.local_steps), str(r.sources_per_round), _status(r)] for f in col.families for r in f.runs]
    table = Table(["folder", "family", "variant", "seed", "rounds", "N (local steps)", "sources / round", "status"],
                  rows, align="lllrrrrl")
    text = (f"{len(col.runs)} run(s) in {len(col.families)} famil{'y' if len(col.families) == 1 else 'ies'}. A family "
            "is the variant (with the mixture temperature τ for STD and ACT); runs of one family with the same "
            "settings apart from the seed are its seeds, shown as mean ± sample standard deviation (n − 1) over "
            "the n seeds.")
    return Section("Runs", [text, table])


def _per_source_table(col: Collection, what: str, digits: int, best: bool) -> Table:
    families = col.families
    header = ["source"] + [family_header(f) for f in families]
    rows = []

    def row(name: str, spreads: list[Spread]) -> list[str]:
        cells = [s.fmt(digits) for s in spreads]
        if best and len(families) > 1:
            means = [round(s.mean, digits) for s in spreads if s.n]
            if means:  # the lowest as shown (ties all bold)
                low = min(means)
                cells = [f"**{c}**" if s.n and round(s.mean, digits) == low else c
                         for c, s in zip(cells, spreads, strict=True)]
        return [name] + cells

    for name, unseen in col.sources:
        rows.append(row(name + (" (unseen)" if unseen else ""), [f.final_score(name, what) for f in families]))
    if what == "bpb":
        rows.append(row("mean (trained sources)", [f.final_mean_bpb() for f in families]))
        if any(f.final_mean_bpb(unseen=True).n for f in families):
            rows.append(row("mean (unseen sources)", [f.final_mean_bpb(unseen=True) for f in families]))
    return Table(header, rows)


def _figure(figures: dict[str, str], name: str) -> list:
    return [Image(name, figures[name])] if name in figures else []


def quality_section(col: Collection, figures: dict[str, str]) -> Section:
    blocks: list = ["Validation bits per byte at the end of each run (lower is better; the lowest of each row in "
                    "bold). Bits per byte count the same text for every variant, whatever its tokenizer, so they "
                    "compare across families."]
    if any(r.final for r in col.runs):
        blocks.append(_per_source_table(col, "bpb", 4, best=True))
    else:
        blocks.append("No run has been evaluated yet.")
    for name in ("final_bpb.png", "bpb_curves.png", "bpb_per_source.png"):
        blocks += _figure(figures, name)
    return Section("Bits per byte", blocks)


def perplexity_section(col: Collection) -> Section | None:
    if not any(r.final for r in col.runs):
        return None
    return Section("Perplexity per token", [
        "Validation perplexity per token at the end of each run. A token is a different unit in each variant's "
        "tokenizer (SPEC-OPT: each source's own), so compare perplexities within a family, and bits per byte "
        "across families.",
        _per_source_table(col, "perplexity", 2, best=False)])


def _held(f: Family) -> str:
    held = f.embedding_params_held()
    if not held:
        return "n/a"
    if MIXTURE in held:
        return f"{held[MIXTURE]:,} (one model)"
    lo, hi = min(held.values()), max(held.values())
    return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"


def communication_section(col: Collection, figures: dict[str, str]) -> Section:
    rows = []
    for f in col.families:
        total, std = f.total_bytes(), f.std_equivalent_bytes()
        ratio = std.mean / total.mean if total.n and total.mean else math.nan
        rows.append([family_header(f), str(max(r.rounds_done for r in f.runs)), fmt_spread_bytes(f.bytes_per_round()),
                     fmt_spread_bytes(total), fmt_spread_bytes(std),
                     "n/a" if math.isnan(ratio) else f"{ratio:,.1f}×", _held(f)])
    table = Table(["family", "rounds", "per round", "whole run", "STD equivalent", "less than STD",
                   "embedding parameters per worker"], rows)
    text = ("Bytes sent and received (down + up, all sampled sources) per round and over the whole run, against "
            "what data-parallel STD would move for the same rounds: an all-reduce of every parameter at each of "
            "the N local steps, for each of the round's sources. STD and ACT report that figure as what they move.")
    blocks = [text, table] + _figure(figures, "communication.png")
    if "memory.png" in figures:
        blocks += ["Memory: the embedding table each worker holds.", Image("memory.png", figures["memory.png"])]
    return Section("Communication and memory", blocks)


def stability_section(figures: dict[str, str]) -> Section:
    if "stability.png" in figures:
        return Section("Stability", _figure(figures, "stability.png"))
    return Section("Stability", ["These runs did not record training-stability statistics (older runs)."])


def consolidation_section(col: Collection) -> Section | None:
    if not col.consolidations:
        return None
    rows = []
    for c in col.consolidations:
        share = f"{c.steps} ({c.steps / c.pretraining_steps:.0%})" if c.pretraining_steps else str(c.steps)
        rows.append([display_path(c.path), col.family_of(c.run) or c.variant, share, Spread.of([c.mean_bpb_run]).fmt(),
                     Spread.of([c.mean_bpb_before]).fmt(), Spread.of([c.mean_bpb_after]).fmt()])
    return Section("Consolidation", [
        "Continued pre-training of one global-vocabulary model from each run's body: mean bits per byte of the "
        "trained sources with the run's own tables, with the global table consolidation starts from, and after.",
        Table(["model folder", "family", "steps (of pre-training)", "run's own tables", "global table, start",
               "consolidated"], rows, align="llrrrr")])


def plasticity_section(col: Collection, figures: dict[str, str]) -> Section | None:
    if not col.adaptations:
        return None
    rows = []
    for a in col.adaptations:
        for c in a.curves:
            if not c.bpb:
                continue
            family = col.family_of(c.run)
            rows.append([a.source, c.label if family else curve_name(c),
                         family or f"{c.variant} (run not in the report)", "frozen" if a.freeze_body else "trained",
                         Spread.of([c.bpb[0]]).fmt(), str(c.steps[-1]), Spread.of([c.bpb[-1]]).fmt()])
    blocks = ["Each pre-trained body learns a source it never saw, with a fresh embedding, on the same data and "
              "budget: held-out bits per byte at the start and at the end.",
              Table(["new source", "body", "family", "body was", "bits/byte at step 0", "steps",
                     "bits/byte at the end"], rows, align="llllrrr")]
    return Section("Plasticity", blocks + _figure(figures, "plasticity.png"))


def sections(col: Collection, figures: dict[str, str]) -> list[Section]:
    out: list[Section | None] = [runs_section(col)]
    if col.runs:
        out += [quality_section(col, figures), perplexity_section(col), communication_section(col, figures),
                stability_section(figures)]
    out += [consolidation_section(col), plasticity_section(col, figures)]
    return [s for s in out if s is not None]


def title_of(col: Collection) -> str:
    return f"DEPT report: {len(col.runs)} run(s), {len(col.families)} famil{'y' if len(col.families) == 1 else 'ies'}"


# ---- rendering ----------------------------------------------------------------------------------------------------

def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, secs: list[Section], generated: datetime | None = None) -> str:
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {title}", "", f"Generated {when} by `dept report`.", ""]
    for s in secs:
        lines += [f"## {s.title}", ""]
        for b in s.blocks:
            if isinstance(b, Table):
                lines.append("| " + " | ".join(map(_md_cell, b.header)) + " |")
                lines.append("|" + "".join("---:|" if b.is_number(i) else ":---|" for i in range(len(b.header))))
                lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows]
            elif isinstance(b, Image):
                lines += [f"![{b.file}]({b.file})", "", f"*{b.caption}*"]
            else:
                lines.append(str(b))
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1000px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; font-size: .88em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; }
th { background: #f4f4f4; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; margin-top: .3em; }
.meta { color: #777; font-size: .9em; }
"""


def _html_cell(text: str, tag: str, numeric: bool) -> str:
    bold = text.startswith("**") and text.endswith("**") and len(text) > 4
    inner = html.escape(text[2:-2] if bold else text)
    inner = f"<strong>{inner}</strong>" if bold else inner
    attr = ' class="num"' if numeric else ""
    return f"<{tag}{attr}>{inner}</{tag}>"


def render_html(title: str, secs: list[Section], generated: datetime | None = None) -> str:
    when = (generated or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{e(title)}</title>",
             f"<style>{CSS}</style>", "</head>", "<body>", f"<h1>{e(title)}</h1>",
             f'<p class="meta">Generated {e(when)} by <code>dept report</code>.</p>']
    for s in secs:
        parts.append(f"<h2>{e(s.title)}</h2>")
        for b in s.blocks:
            if isinstance(b, Table):
                parts.append('<div class="scroll"><table>')
                parts.append("<tr>" + "".join(_html_cell(h, "th", b.is_number(i)) for i, h in enumerate(b.header))
                             + "</tr>")
                for row in b.rows:
                    parts.append("<tr>" + "".join(_html_cell(c, "td", b.is_number(i)) for i, c in enumerate(row))
                                 + "</tr>")
                parts.append("</table></div>")
            elif isinstance(b, Image):
                parts.append(f'<figure><img src="{e(b.file)}" alt="{e(b.caption)}">'
                             f"<figcaption>{e(b.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p>{e(str(b))}</p>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
