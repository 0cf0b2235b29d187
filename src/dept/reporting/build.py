"""`build_report`: read the runs, draw the figures and write the Markdown and HTML pages into one folder.

```
OUT/report.md           the tables and figures, Markdown
OUT/report.html         the same, self-contained HTML (figures by relative path)
OUT/bpb_curves.png      mean validation bits per byte over rounds, per family (seed bands)
OUT/bpb_per_source.png  the same per source (small multiples; up to 16 sources, with more than one evaluation)
OUT/final_bpb.png       final mean bits per byte per family, trained and unseen, mean ± std over seeds
OUT/communication.png   bytes per round and in all per family, log scale, against STD's equivalent
OUT/memory.png          embedding parameters each source's worker holds, per family
OUT/stability.png       body norm, pseudo-gradient norm, gradient and activation norms per round
OUT/plasticity.png      held-out bits per byte along an adaptation (where adaptation results are given)
```
The folder is built beside OUT and renamed into place: OUT holds a whole report or the previous one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from dept.atomic_io import publish_dir
from dept.errors import DeptError
from dept.reporting.collect import Collection, collect
from dept.reporting.page import render_html, render_markdown, sections, title_of
from dept.reporting.plots import draw_all, require_matplotlib

REPORT_MD = "report.md"
REPORT_HTML = "report.html"


def _check_out(out: Path, col: Collection) -> None:
    if out.exists() and not out.is_dir():
        raise DeptError(f"--out {out}: a file is there, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / REPORT_MD).is_file():
        raise DeptError(f"--out {out}: the folder holds something other than a report: choose another")
    resolved = out.resolve()
    for r in col.runs:
        if resolved == r.path or r.path.is_relative_to(resolved):
            raise DeptError(f"--out {out}: it would replace the run folder {r.path}")


def build_report(run_dirs: list[Path], out: Path, log=print) -> Path:
    """Write the report of `run_dirs` (run folders, adaptation results, consolidated model folders) into `out`,
    replacing an older report there; returns the path of `report.md`."""
    out = Path(out)
    col = collect([Path(p) for p in run_dirs], log)
    _check_out(out, col)
    require_matplotlib()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        log(f"report of {len(col.runs)} run(s) in {len(col.families)} family(ies): drawing")
        figures = dict(draw_all(col, tmp, log))
        secs = sections(col, figures)
        title = title_of(col)
        (tmp / REPORT_MD).write_text(render_markdown(title, secs), encoding="utf-8")
        (tmp / REPORT_HTML).write_text(render_html(title, secs), encoding="utf-8")
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"report written to {out / REPORT_MD} (and {REPORT_HTML})")
    return out / REPORT_MD
