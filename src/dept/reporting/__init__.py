"""A report of several runs: per-source and seed-aggregated tables, figures, Markdown and HTML pages.

`build_report(run_dirs, out)` is the one entry point (`dept report RUN_DIR... --out DIR`); `collect` reads runs
into typed records without drawing anything (matplotlib is needed only for the figures, imported when drawn).
"""

from dept.reporting.build import build_report
from dept.reporting.collect import Collection, Family, RunRecord, Spread, collect

__all__ = ["Collection", "Family", "RunRecord", "Spread", "build_report", "collect"]
