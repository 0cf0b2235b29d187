"""Kill campaign: stop dept with SIGKILL at random moments, resume each time, and compare with a run never stopped.

```
python campaigns/kill.py                                    # 12 kills per job, every job; JSON to campaigns/results/
python campaigns/kill.py --kills 24 --jobs spec_opt,std     # more kills, some jobs
```

A job is a command that may be stopped and resumed: `dept train` for SPEC-OPT, TRIM with the Nesterov outer
optimizer and STD, `dept prepare`, `dept consolidate` (which resumes with `--resume`) and `dept adapt` (which has
no resume: it is run again from the start). Each stop is either at a random moment of the process's life (a timer)
or at a named point inside it (`dept.failpoints`: in a local step, inside an atomic write after its bytes are on
disk, between a folder's two renames, after a source's evaluation, in the middle of a metrics line, at start-up),
each drawn at random. After the stops the job runs to its end, and every file of its output is compared bitwise
with the output of one uninterrupted run. Timings are the one thing that differs by nature: keys ending in `_s`
are dropped from JSON files before the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where each job may be stopped: a named point and the highest count drawn (a count the job surely reaches before
# it ends, so every stop falls inside the job), besides timers.
STOPS = {
    "train": {"step": 24, "write": 36, "metrics": 6, "eval": 8, "startup": 1},  # 24 rounds: ~1.5 rounds a stop
    "prepare": {"write": 5, "publish": 2},
    "consolidate": {"step": 12, "write": 3},  # 96 steps, progress saved every 9
    "adapt": {"write": 1, "step": 12},
}
TRAIN_JOBS = {  # name: overrides of the base config
    "spec_opt": ["train.variant=spec_opt"],
    "trim_nesterov": ["train.variant=trim", "train.outer.kind=nesterov", "train.outer.lr=0.7",
                      "train.outer.momentum=0.9"],
    "std": ["train.variant=std"],
}
JOBS = (*TRAIN_JOBS, "prepare", "consolidate", "adapt")
IGNORED = (".dept.lock",)


def workspace(root: Path, docs: int = 12, rounds: int = 8) -> Path:
    """A small real corpus (the leading chapters of the demo's sources) and a config for it."""
    corpus = root / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for name in ("en_bible", "fr_bible", "python_code", "de_bible"):
        lines = (ROOT / "data" / "demo" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[:docs]
        (corpus / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = root / "config.yaml"
    config.write_text(f"""\
run: {{dir: {root / 'run'}, seed: 0}}
data:
  dir: {root / 'prepared'}
  val_fraction: 0.15
  sources:
    - {{name: en, files: [{corpus / 'en_bible.jsonl'}]}}
    - {{name: fr, files: [{corpus / 'fr_bible.jsonl'}]}}
    - {{name: code, files: [{corpus / 'python_code.jsonl'}]}}
    - {{name: de, files: [{corpus / 'de_bible.jsonl'}], unseen: true}}
  tokenizer: {{global: {{vocab_size: 400}}, per_source: {{vocab_size: 300}}}}
model: {{d_model: 32, n_layers: 2, n_heads: 2, max_seq_len: 64}}
train:
  rounds: {rounds}
  local_steps: 4
  sources_per_round: 2
  batch_size: 2
  seq_len: 32
  threads: 1
  checkpoint_every: 1
  keep_checkpoints: 2
  inner: {{warmup_steps: 2}}
eval: {{every: 3, max_bytes: 2048, batch_size: 8}}
""", encoding="utf-8")
    return config


def dept(*args: str, kill_at: str | None = None, timer_s: float | None = None, cwd: Path = ROOT) -> int:
    """Run `dept ARGS` in a fresh process; stop it at the named point or after `timer_s` seconds."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("DEPT_KILL_AT", None)
    if kill_at:
        env["DEPT_KILL_AT"] = kill_at
    proc = subprocess.Popen([sys.executable, "-m", "dept", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timer_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return -signal.SIGKILL
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"dept {' '.join(args)} failed ({proc.returncode}): {err.strip()[-2000:]}")
    return proc.returncode


def _normalised(data: bytes, name: str, folder: Path) -> bytes:
    """Timings removed from JSON and JSON-lines files, the folder's own path from its config; the rest as is."""
    if not name.endswith((".json", ".jsonl", ".yaml")):
        return data
    data = data.replace(str(folder).encode(), b"FOLDER")  # a config's run.dir, a result's output folder
    if name.endswith(".yaml"):
        return data

    def drop(obj):
        if isinstance(obj, dict):
            return {k: drop(v) for k, v in obj.items() if not k.endswith("_s")}
        if isinstance(obj, list):
            return [drop(v) for v in obj]
        return obj

    try:
        if name.endswith("manifest.json") and "checkpoints" in name:  # digests of the files normalised here
            files = json.loads(data)["files"]
            return json.dumps({k: v for k, v in files.items() if not k.endswith((".yaml", ".jsonl"))}).encode()
        if name.endswith(".jsonl"):
            return "\n".join(json.dumps(drop(json.loads(x)), sort_keys=True)
                             for x in data.decode().splitlines()).encode()
        return json.dumps(drop(json.loads(data)), sort_keys=True).encode()
    except (ValueError, UnicodeDecodeError):
        return data


def differences(expected: Path, got: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Files that are missing, extra or different in `got` (relative paths)."""
    def files(root: Path) -> dict[str, Path]:
        return {str(p.relative_to(root)): p for p in root.rglob("*")
                if p.is_file() and p.name not in IGNORED and not any(s in p.parts for s in skip)}
    a, b = files(expected), files(got)
    out = [f"missing {k}" for k in sorted(a.keys() - b.keys())] + [f"extra {k}" for k in sorted(b.keys() - a.keys())]
    out += [f"differs {k}" for k in sorted(a.keys() & b.keys())
            if _normalised(a[k].read_bytes(), k, expected) != _normalised(b[k].read_bytes(), k, got)]
    return out


@dataclass
class JobResult:
    job: str
    kills: int = 0
    launches: int = 0
    ran_to_end: int = 0  # launches that ended before their stop came
    stops_before_end: int = 0  # stops while the job had not yet ended once (the others hit a finished job)
    kinds: dict[str, int] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.differences and self.kills > 0


class Campaign:
    """One workspace: the corpus, its prepared data and a finished reference run for the post-training jobs."""

    def __init__(self, root: Path, rng: random.Random, stops: list[str] | None = None, rounds: int = 8):
        """`stops`: stop at these points in turn (`step:3`...) instead of at random moments."""
        self.root, self.rng, self.stops = root, rng, stops
        self.config = workspace(root, rounds=rounds)
        self.consolidate_steps = 96 if rounds >= 24 else 24  # progress is saved every tenth
        self._reference_s: dict[str, float] = {}

    def _random_stop(self, menu: dict[str, int]) -> tuple[str | None, str]:
        """A random stop: a timer (a third of the time) or a named point of `menu` with a random count."""
        if self.rng.random() < 1 / 3:
            return None, "timer"
        point = self.rng.choice(sorted(menu))
        return f"{point}:{self.rng.randint(1, menu[point])}", point

    def _stopped_until_done(self, result: JobResult, kills: int, first: list[str], again: list[str],
                            reference_s: float, menu: dict[str, int]) -> None:
        """Launch `first`, then `again`, stopping each launch until `kills` stops happened (or, with `self.stops`,
        at those points in turn); then run to the end. Timers fall in the first `reference_s` seconds."""
        args = first
        planned = list(self.stops) if self.stops else None
        while (planned if planned is not None else result.kills < kills) and result.launches < 6 * kills:
            kill_at, kind = (planned.pop(0), "") if planned else self._random_stop(menu)
            kind = kind or kill_at.split(":")[0]
            timer = self.rng.uniform(0.5, max(1.0, 0.8 * reference_s)) if kind == "timer" else None
            rc = dept(*args, kill_at=kill_at, timer_s=timer)
            result.launches += 1
            args = again
            if rc == -signal.SIGKILL:
                result.kills += 1
                result.kinds[kind] = result.kinds.get(kind, 0) + 1
                result.stops_before_end += result.ran_to_end == 0
            else:  # it ended before its stop: later launches resume a finished job (stops there count too)
                result.ran_to_end += 1
        dept(*args)
        result.launches += 1

    def _timed(self, *args: str) -> float:
        t0 = time.perf_counter()
        dept(*args)
        return time.perf_counter() - t0

    def prepare_reference(self) -> None:
        self._reference_s["prepare"] = self._timed("prepare", str(self.config))

    def _job(self, job: str, kills: int, reference: Path, got: Path, first: list[str], again: list[str],
             reference_s: float, skip: tuple[str, ...] = ()) -> JobResult:
        """Stop `first`/`again` launches writing `got`, then compare it with `reference` file by file."""
        t0 = time.perf_counter()
        result = JobResult(job)
        self._stopped_until_done(result, kills, first, again, reference_s, STOPS["train" if job in TRAIN_JOBS else job])
        result.differences = differences(reference, got, skip=skip)
        result.wall_s = time.perf_counter() - t0
        return result

    def train_job(self, job: str, kills: int) -> JobResult:
        ref, got = self.root / f"{job}-reference", self.root / f"{job}-stopped"
        base = [str(self.config), *TRAIN_JOBS[job]]
        reference_s = self._timed("train", *base, f"run.dir={ref}")
        return self._job(job, kills, ref, got, ["train", *base, f"run.dir={got}"], ["train", "--resume", str(got)],
                         reference_s / 2, skip=(".discarded",))

    def prepare_job(self, kills: int) -> JobResult:
        got = self.root / "prepared-stopped"
        args = ["prepare", str(self.config), f"data.dir={got}"]
        return self._job("prepare", kills, self.root / "prepared", got, args, args, self._reference_s["prepare"])

    def _finished_run(self) -> Path:
        run = self.root / "spec_opt-reference"
        if not (run / "results.json").is_file():
            dept("train", str(self.config), *TRAIN_JOBS["spec_opt"], f"run.dir={run}")
        return run

    def _model_job(self, job: str, kills: int, args: list[str], folder: str, resume: list[str]) -> JobResult:
        """A post-training command writing a model folder (`--out`); `resume`: what a relaunch adds."""
        ref, got = self.root / f"{folder}-reference", self.root / f"{folder}-stopped"
        reference_s = self._timed(*args, "--out", str(ref))
        return self._job(job, kills, ref, got, [*args, "--out", str(got)], [*args, "--out", str(got), *resume],
                         reference_s)

    def consolidate_job(self, kills: int) -> JobResult:
        args = ["consolidate", str(self._finished_run()), "--steps", str(self.consolidate_steps), "--device", "cpu"]
        return self._model_job("consolidate", kills, args, "consolidated", ["--resume"])

    def adapt_job(self, kills: int) -> JobResult:
        args = ["adapt", str(self._finished_run()), "--source", f"de={self.root / 'corpus' / 'de_bible.jsonl'}",
                "--steps", "16", "--eval-every", "8", "--device", "cpu"]
        return self._model_job("adapt", kills, args, "adapted", [])  # no resume: run again from the start

    def run(self, job: str, kills: int) -> JobResult:
        if job == "prepare":
            return self.prepare_job(kills)
        if job == "consolidate":
            return self.consolidate_job(kills)
        if job == "adapt":
            return self.adapt_job(kills)
        return self.train_job(job, kills)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=12, help="stops per job")
    parser.add_argument("--jobs", default=",".join(JOBS), help=f"comma-separated, of {', '.join(JOBS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=24, help="rounds of the runs stopped (4 local steps each)")
    parser.add_argument("--out", type=Path, default=ROOT / "campaigns" / "results" / "kill.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from machine import cpu_model

    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="dept-kill-") as tmp:
        campaign = Campaign(Path(tmp), random.Random(args.seed), rounds=args.rounds)
        campaign.prepare_reference()
        for job in args.jobs.split(","):
            result = campaign.run(job, args.kills)
            results.append(result)
            status = "equal" if result.passed else f"DIFFERENT: {result.differences[:5]}"
            print(f"{job}: {result.kills} stops ({result.stops_before_end} before it first ended; {result.kinds}) "
                  f"in {result.launches} launches, "
                  f"{result.wall_s:.0f} s: {status}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(["python", "campaigns/kill.py", *sys.argv[1:]]),
                                    "cpu": cpu_model(), "seed": args.seed, "wall_s": time.perf_counter() - t0,
                                    "jobs": [asdict(r) | {"passed": r.passed} for r in results]}, indent=2) + "\n")
    sys.exit(0 if all(r.passed for r in results) else 1)


if __name__ == "__main__":
    main()
