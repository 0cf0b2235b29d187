"""Read run folders (and adaptation / consolidation results) into typed records, grouped into families of seeds.

A *family* is what one column of the report stands for: the variant, plus `τ=<std_temperature>` for STD/ACT
(their mixture's temperature is what distinguishes them). Runs of one family whose configs are the same apart
from `run.seed`, `run.dir` and settings that only say where or how fast a run executes (`EXECUTION_ONLY`) are
seeds of one experiment: the report shows their mean ± standard deviation. Two groups that would share a label
(e.g. the same variant trained for a different number of rounds) get the differing settings appended to it.

Nothing here needs matplotlib.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from dept.algorithm.variants import spec_of
from dept.config import Config, flatten_settings
from dept.errors import DeptError
from dept.run_folder import RunFolder

MIXTURE = "_mixture"  # the participant key of STD/ACT's one worker

# Dotted config keys that do not change what a run computes (only where or how fast it runs, or where it is kept).
EXECUTION_ONLY = ("run.seed", "run.dir", "data.dir", "train.threads", "train.device", "train.engine", "train.speed",
                  "train.checkpoint_every", "train.keep_checkpoints", "train.min_sources", "train.round_retries",
                  "train.ranks_per_source", "train.data_parallel", "train.micro_batch_size",
                  "train.activation_checkpointing",
                  "eval.every", "flower")


# ---- statistics ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (n − 1 in the denominator; 0 for one value) of n values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values) -> Spread:
        vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
        if not vals:
            return cls(math.nan, math.nan, 0)
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
        return cls(mean, math.sqrt(var), len(vals))

    def fmt(self, digits: int = 4) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.n > 1 else "")


# ---- records ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceScore:
    source: str
    unseen: bool
    bpb: float
    perplexity: float
    loss: float
    note: str = ""


@dataclass
class EvalPoint:
    round: int  # 0-based: evaluated after round `round + 1`
    scores: dict[str, SourceScore]
    mean_bpb: float
    mean_bpb_unseen: float | None


@dataclass
class RoundPoint:
    round: int
    sources: list[str]
    bytes_moved: int  # down + up over the round's participants (STD/ACT: the STD equivalent, what they report)
    std_equivalent: int  # what data-parallel STD moves for the same round
    embedding_params_held: dict[str, int]
    stability: dict[str, float] | None  # body_norm, pseudo_grad_norm, grad_norm, activation_norm (means)


STABILITY_KEYS = ("body_norm", "pseudo_grad_norm", "grad_norm", "activation_norm")


@dataclass
class Consolidation:
    path: Path
    variant: str
    run: Path | None  # the run it continued, when known
    steps: int
    pretraining_steps: int
    mean_bpb_run: float
    mean_bpb_before: float
    mean_bpb_after: float


@dataclass
class AdaptCurve:
    label: str
    run: Path | None
    variant: str
    steps: list[int]
    bpb: list[float]


@dataclass
class Adaptation:
    path: Path
    source: str
    freeze_body: bool
    curves: list[AdaptCurve]


@dataclass
class RunRecord:
    path: Path
    variant: str
    baseline: bool
    seed: int
    family: str  # final label (disambiguated by `group_families`)
    config_key: str
    config_flat: dict
    rounds_planned: int
    local_steps: int
    sources_per_round: int
    trained: list[str]
    unseen: list[str]
    rounds: list[RoundPoint]
    evals: list[EvalPoint]
    final: EvalPoint | None
    finished: bool  # results.json written
    bytes_moved: int
    std_equivalent_bytes: int
    consolidations: list[Consolidation] = field(default_factory=list)

    @property
    def rounds_done(self) -> int:
        return len(self.rounds)

    @property
    def embedding_params_held(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for r in self.rounds:
            for k, v in r.embedding_params_held.items():
                held[k] = max(held.get(k, 0), int(v))
        return held


@dataclass
class Family:
    label: str
    runs: list[RunRecord]

    @property
    def variant(self) -> str:
        return self.runs[0].variant

    @property
    def baseline(self) -> bool:
        return self.runs[0].baseline

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    def final_score(self, source: str, what: str = "bpb") -> Spread:
        return Spread.of(getattr(r.final.scores[source], what) for r in self.runs
                         if r.final is not None and source in r.final.scores)

    def final_mean_bpb(self, unseen: bool = False) -> Spread:
        return Spread.of((r.final.mean_bpb_unseen if unseen else r.final.mean_bpb) for r in self.runs
                         if r.final is not None)

    def total_bytes(self) -> Spread:
        return Spread.of(r.bytes_moved for r in self.runs)

    def std_equivalent_bytes(self) -> Spread:
        return Spread.of(r.std_equivalent_bytes for r in self.runs)

    def bytes_per_round(self) -> Spread:
        return Spread.of(r.bytes_moved / r.rounds_done for r in self.runs if r.rounds_done)

    def curve(self, value) -> tuple[list[int], list[Spread]]:
        """`value(eval_point)` per evaluated round (1-based), mean ± std over the seeds that reached it."""
        by_round: dict[int, list[float]] = {}
        for r in self.runs:
            for e in r.evals:
                v = value(e)
                if v is not None:
                    by_round.setdefault(e.round + 1, []).append(v)
        rounds = sorted(by_round)
        return rounds, [Spread.of(by_round[x]) for x in rounds]

    def round_series(self, value) -> tuple[list[int], list[Spread]]:
        """`value(round_point)` per round (1-based), mean ± std over seeds."""
        by_round: dict[int, list[float]] = {}
        for r in self.runs:
            for p in r.rounds:
                v = value(p)
                if v is not None:
                    by_round.setdefault(p.round + 1, []).append(v)
        rounds = sorted(by_round)
        return rounds, [Spread.of(by_round[x]) for x in rounds]

    def embedding_params_held(self) -> dict[str, int]:
        """Per participant key, the mean over the seeds that sampled it (rounded)."""
        held: dict[str, list[int]] = {}
        for r in self.runs:
            for k, v in r.embedding_params_held.items():
                held.setdefault(k, []).append(v)
        return {k: round(sum(v) / len(v)) for k, v in held.items()}


@dataclass
class Collection:
    runs: list[RunRecord]
    families: list[Family]
    adaptations: list[Adaptation]
    consolidations: list[Consolidation]

    @property
    def sources(self) -> list[tuple[str, bool]]:
        """Every evaluated source, trained first, in config order: (name, unseen)."""
        seen: dict[str, bool] = {}
        for r in self.runs:
            for s in r.trained:
                seen.setdefault(s, False)
        for r in self.runs:
            for s in r.unseen:
                seen.setdefault(s, True)
        return sorted(seen.items(), key=lambda kv: kv[1])

    def family_of(self, run_path: Path | None) -> str | None:
        if run_path is None:
            return None
        for r in self.runs:
            if r.path == run_path:
                return r.family
        return None


def display_path(p: Path) -> str:
    """Relative to the working folder when under it, else absolute."""
    try:
        rel = os.path.relpath(p)
    except ValueError:  # another drive
        return str(p)
    return str(p) if rel.startswith("..") else rel


def curve_name(c: AdaptCurve) -> str:
    """An adapted body whose run is not in the report: named by its run folder."""
    return display_path(c.run) if c.run is not None else c.label


# ---- reading ------------------------------------------------------------------------------------------------------

def _experiment_settings(cfg: Config) -> dict:
    flat = flatten_settings(cfg.to_resolved_dict(), expand_lists=False)
    return {k: v for k, v in flat.items()
            if not any(k == x or k.startswith(x + ".") for x in EXECUTION_ONLY)}


def family_label(variant: str, std_temperature: float) -> str:
    return f"{variant} τ={std_temperature:g}" if spec_of(variant).baseline else variant


def _score(r: dict) -> SourceScore:
    return SourceScore(r["source"], bool(r.get("unseen", False)), float(r["bpb"]), float(r.get("perplexity", math.nan)),
                       float(r.get("loss", math.nan)), r.get("note", "") or "")


def _eval_point(record: dict, round_index: int) -> EvalPoint:
    scores = {s.source: s for s in map(_score, record.get("results", []))}
    trained = [s.bpb for s in scores.values() if not s.unseen]
    unseen = [s.bpb for s in scores.values() if s.unseen]
    mean = record.get("mean_bpb", sum(trained) / len(trained) if trained else math.nan)
    mean_unseen = record.get("mean_bpb_unseen", sum(unseen) / len(unseen) if unseen else None)
    return EvalPoint(round_index, scores, float(mean), None if mean_unseen is None else float(mean_unseen))


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(vals) / len(vals) if vals else None


def _round_point(record: dict, sources_per_round: int, baseline: bool) -> RoundPoint:
    std = 2 * int(record.get("std_bytes_per_source", 0)) * sources_per_round
    moved = sum(record.get("bytes_down", {}).values()) + sum(record.get("bytes_up", {}).values())
    stability = None
    raw = record.get("stability")
    if isinstance(raw, dict):
        stability = {"body_norm": raw.get("body_norm"), "pseudo_grad_norm": raw.get("pseudo_grad_norm"),
                     "grad_norm": _mean((raw.get("grad_norm") or {}).values()),
                     "activation_norm": _mean((raw.get("activation_norm") or {}).values())}
    return RoundPoint(int(record["round"]), list(record.get("sources", [])), std if baseline else int(moved), std,
                      {k: int(v) for k, v in (record.get("embedding_params_held") or {}).items()}, stability)


def _read_consolidation(folder: Path) -> Consolidation:
    path = folder / "consolidation.json"
    try:
        d = json.loads(path.read_text())
        plan = d["plan"]
        run = None
        meta = folder / "dept_model.json"
        if meta.is_file():
            origin = json.loads(meta.read_text()).get("origin", {})
            run = Path(origin["run"]).resolve() if origin.get("run") else None
        return Consolidation(folder.resolve(), d["variant"], run, int(plan["steps"]), int(plan["pretraining_steps"]),
                             float(d.get("mean_bpb_run") or math.nan), float(d["mean_bpb_before"]),
                             float(d["mean_bpb_after"]))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DeptError(f"{path}: not a consolidation result ({type(err).__name__}: {err})") from None


def read_adaptation(folder: Path) -> Adaptation:
    path = folder / "adaptation.json"
    try:
        d = json.loads(path.read_text())
        curves = [AdaptCurve(c["label"], Path(c["run"]).resolve() if c.get("run") else None, c["variant"],
                             [int(s) for s in c["steps"]], [float(b) for b in c["bpb"]]) for c in d["curves"]]
        return Adaptation(folder.resolve(), d["source"], bool(d.get("settings", {}).get("freeze_body", False)),
                          curves)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DeptError(f"{path}: not an adaptation result ({type(err).__name__}: {err})") from None


def read_run(folder: Path) -> RunRecord:
    """One run folder; a DeptError naming the folder when it is not one or holds no metrics."""
    folder = Path(folder)
    run = RunFolder(folder)
    if not run.config_path.is_file():
        raise DeptError(f"{folder}: not a run folder (no config.yaml) nor an adaptation result (no adaptation.json)")
    try:
        cfg = run.saved_config()
    except DeptError as err:
        raise DeptError(f"{folder}: its config.yaml cannot be read: {err}") from None
    variant = cfg.train.variant.value
    baseline = spec_of(variant).baseline
    records = run.metrics()
    round_records = [r for r in records if r.get("event") == "round" and isinstance(r.get("round"), int)]
    eval_records = [r for r in records if r.get("event") == "eval" and isinstance(r.get("round"), int)]
    if not round_records and not eval_records:
        raise DeptError(f"{folder}: no metrics (metrics.jsonl is missing or empty): the run has not trained a round")
    try:
        rounds = {r["round"]: _round_point(r, cfg.sources_per_round, baseline) for r in round_records}
        evals = {r["round"]: _eval_point(r, r["round"]) for r in eval_records}  # a repeated round: the last one
    except (KeyError, TypeError, ValueError) as err:
        raise DeptError(f"{run.metrics_path}: a record is malformed ({type(err).__name__}: {err})") from None
    rounds_list = [rounds[k] for k in sorted(rounds)]
    evals_list = [evals[k] for k in sorted(evals)]
    final = evals_list[-1] if evals_list else None
    finished = run.results_path.is_file()
    moved = sum(p.bytes_moved for p in rounds_list)
    std = sum(p.std_equivalent for p in rounds_list)
    if finished:
        try:
            results = json.loads(run.results_path.read_text())
            final = _eval_point(results, final.round if final else len(rounds_list) - 1)
            moved = int(results.get("bytes_moved", moved))
            std = int(results.get("std_equivalent_bytes", std))
        except (ValueError, KeyError, TypeError) as err:
            raise DeptError(f"{run.results_path}: cannot be read ({type(err).__name__}: {err})") from None
    settings = _experiment_settings(cfg)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    record = RunRecord(folder.resolve(), variant, baseline, cfg.run.seed,
                       family_label(variant, cfg.train.std_temperature), key, settings, cfg.train.rounds,
                       cfg.train.local_steps, cfg.sources_per_round, [s.name for s in cfg.trained_sources],
                       [s.name for s in cfg.data.sources if s.unseen], rounds_list, evals_list, final, finished,
                       moved, std)
    if (folder / "consolidated" / "consolidation.json").is_file():
        record.consolidations.append(_read_consolidation(folder / "consolidated"))
    return record


def group_families(runs: list[RunRecord]) -> list[Family]:
    """Runs with the same label and the same experiment settings are seeds of one family (first-seen order)."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in runs:
        groups.setdefault((r.family, r.config_key), []).append(r)
    by_label: dict[str, list[tuple[str, str]]] = {}
    for key in groups:
        by_label.setdefault(key[0], []).append(key)
    families = []
    for key, members in groups.items():
        label = key[0]
        rivals = by_label[label]
        if len(rivals) > 1:
            others = [groups[k][0] for k in rivals if k != key]
            label = f"{label} ({_difference(members[0], others, rivals.index(key))})"
        for r in members:
            r.family = label
        families.append(Family(label, sorted(members, key=lambda r: r.seed)))
    return families


def _difference(run: RunRecord, others: list[RunRecord], index: int) -> str:
    """The settings that set this group apart from the others of its label, shortly: `rounds=8, lr=0.003`."""
    keys = sorted(k for k in set(run.config_flat) | {k for o in others for k in o.config_flat}
                  if any(o.config_flat.get(k) != run.config_flat.get(k) for o in others))
    if not keys:
        return f"#{index + 1}"
    parts = [f"{k.rsplit('.', 1)[-1]}={run.config_flat.get(k)}" for k in keys[:2]]
    return ", ".join(parts) + (", …" if len(keys) > 2 else "")


def collect(paths: list[Path], log=print) -> Collection:
    """Read every folder: run folders (config.yaml), adaptation results (adaptation.json) and consolidated model
    folders (consolidation.json). Anything else is refused with a DeptError naming it."""
    if not paths:
        raise DeptError("the report needs at least one run folder")
    runs: list[RunRecord] = []
    adaptations: list[Adaptation] = []
    loose: list[Consolidation] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if not p.is_dir():
            raise DeptError(f"{p}: not a folder")
        resolved = p.resolve()
        if resolved in seen:
            log(f"{p}: given twice, read once")
            continue
        seen.add(resolved)
        if (p / "config.yaml").is_file():
            runs.append(read_run(p))
            for sub in sorted(p.glob("adapted_*/adaptation.json")):
                if sub.parent.resolve() not in seen:
                    seen.add(sub.parent.resolve())
                    adaptations.append(read_adaptation(sub.parent))
        elif (p / "adaptation.json").is_file():
            adaptations.append(read_adaptation(p))
        elif (p / "consolidation.json").is_file():
            loose.append(_read_consolidation(p))
        else:
            raise DeptError(f"{p}: not a run folder (no config.yaml) nor an adaptation result (no adaptation.json)")
    if not runs:
        raise DeptError("the report needs at least one run folder (with config.yaml and metrics.jsonl); "
                        "adaptation and consolidation results are shown beside runs")
    families = group_families(runs)
    consolidations = [c for r in runs for c in r.consolidations]
    known = {c.path for c in consolidations}
    consolidations += [c for c in loose if c.path not in known]
    return Collection(runs, families, adaptations, consolidations)
