"""The fuzz campaign: generated bad input for every part of the `dept` command line, and a JSON summary.

    python campaigns/fuzz.py --cases 1000 --out campaigns/results/fuzz.json

Five families (configs, overrides, data files, CLI options, damaged run folders; see campaigns/fuzz_cases.py) share
the cases evenly. Each case must end in correct handling (exit 0, result checked) or a one-line error (non-zero
exit, one line on stderr, no traceback) and leave no half-written folder. The summary counts, per family, the cases,
the handled ones, the one-line errors and the failures, each failure with its reproducing input; the exit status is
1 when any case failed. tests/test_fuzz.py runs a quick subset of the same cases in CI.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "bench"))

import fuzz_cases as fc  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as fixed_seed  # noqa: E402
from machine import cpu_model  # noqa: E402


def error_kind(line: str) -> str:
    """An error line without its paths and quoted values, to count the kinds of refusal."""
    line = re.sub(r"^error: ", "", line)
    line = re.sub(r"(/[^\s:'\"]+)+", "PATH", line)
    line = re.sub(r"'[^']*'", "'…'", line)
    return line[:80]


def run_family(env: fc.Env, family: str, n: int, seed: int, record) -> None:
    """`n` generated cases of one family; every verdict goes to `record` (failures too: the campaign counts)."""

    @fixed_seed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=fc.strategy(family, env))
    def one(case):
        try:
            verdict = fc.run_case(env, family, case)
        except Exception as err:  # noqa: BLE001 - a fault of the harness, not of dept: counted apart
            verdict = fc.Verdict(family, "harness", f"harness error: {type(err).__name__}: {err}", [], case)
        record(verdict)

    one()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000, help="Generated cases in all (shared by the families)")
    ap.add_argument("--families", default=",".join(fc.FAMILIES), help="Comma-separated subset of the families")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the case generators")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "fuzz.json")
    ap.add_argument("--keep", action="store_true", help="Keep the temporary world (corpus, prepared data, run)")
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(fc.FAMILIES))
    if unknown or args.cases < len(families):
        print(f"error: unknown families {unknown}" if unknown else f"error: --cases {args.cases}: at least one a "
              "family", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(1)  # tiny models: one thread is fastest
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="dept_fuzz_"))
    try:
        env = fc.Env.build(root)
        setup_s = time.perf_counter() - started
        print(f"world ready in {setup_s:.1f}s ({root})", flush=True)
        per_family = math.ceil(args.cases / len(families))
        summary = {}
        failures = []
        for i, family in enumerate(families):
            counts = collections.Counter()
            commands = collections.Counter()
            messages = collections.Counter()
            t0 = time.perf_counter()

            def record(v: fc.Verdict, counts=counts, commands=commands, messages=messages, t0=t0,
                       family=family) -> None:
                counts[v.kind] += 1
                commands[" ".join(str(a) for a in v.argv[1:2]) or "(none)"] += 1
                if v.kind == fc.ERROR:
                    messages[error_kind(v.reason)] += 1
                if v.kind in (fc.FAILURE, "harness"):
                    failures.append(v.to_json())
                    print(f"FAILURE {v.describe()[:1500]}", flush=True)
                done = sum(counts.values())
                if done % 50 == 0:
                    print(f"  {family}: {done} cases, {counts[fc.FAILURE]} failures "
                          f"({time.perf_counter() - t0:.0f}s)", flush=True)

            run_family(env, family, per_family, args.seed + i, record)
            summary[family] = {
                "cases": sum(counts.values()), "handled": counts[fc.HANDLED],
                "one_line_errors": counts[fc.ERROR], "failures": counts[fc.FAILURE],
                "harness_errors": counts["harness"],
                "wall_s": round(time.perf_counter() - t0, 1), "commands": dict(commands.most_common()),
                "most_common_errors": dict(messages.most_common(12)),
            }
            print(f"{family}: {json.dumps({k: v for k, v in summary[family].items() if not isinstance(v, dict)})}",
                  flush=True)
        total = {k: sum(s[k] for s in summary.values())
                 for k in ("cases", "handled", "one_line_errors", "failures", "harness_errors")}
        result = {
            "command": "python campaigns/fuzz.py " + " ".join(sys.argv[1:]),
            "property": "each case ends in exit 0 with a checked result, or a one-line error (non-zero exit, one "
                        "stderr line, no traceback), and leaves no half-written folder",
            "seed": args.seed, "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "setup_s": round(setup_s, 1),
            "wall_s": round(time.perf_counter() - started, 1),
            "total": total, "families": summary,
            "failures": failures,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{total['cases']} cases: {total['handled']} handled, {total['one_line_errors']} one-line errors, "
              f"{total['failures']} failures in {result['wall_s']:.0f}s -> {args.out}")
        return 1 if total["failures"] or total["harness_errors"] else 0
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
