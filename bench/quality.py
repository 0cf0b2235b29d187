"""The paper's experiment, small: every method at one budget of sequential steps, 3 seeds, then consolidation.

Command (from the repository root):

    python scripts/build_corpus.py bench                      # once: the 16-source corpus in ~/.cache/dept/bench
    python bench/quality.py                                    # the sweep on 2 CPU cores (see --help for knobs)
    python bench/quality.py --scale 4 --device cuda           # the same sweep, bigger, on a GPU
    python bench/quality.py --corpus demo --seeds 0 --tune-lrs 3e-3 --rounds 2   # a quick smoke run
    python bench/quality.py --tables bench/results/quality.json   # the tables of a finished sweep again

What runs
---------
Families: STD at τ = 0, 0.3 and 1 (p_k ∝ tokens_k^τ), ACT (τ = 0.3), GLOB, TRIM, SPEC, SPEC-OPT. Every family
gets the same number of sequential steps (rounds × N) and the same tokens per sequential step: DEPT trains
`sources_per_round` sources of `batch` sequences each per round, STD/ACT one model on batches of
`sources_per_round × batch` sequences (the code's default).

1. Learning rate, once per family, on a separate seed (`--tune-seed`, as the paper tuned per method): each rate
   of `--tune-lrs` trains the family for the full budget; the rate with the lowest mean bits per byte on the
   trained sources wins (STD is tuned at τ = 0.3 and that rate serves τ = 0 and 1). A winner on the grid's edge
   is not a tuned rate: the grid is extended outward by its own ratio (up to `--tune-extend` rates).
2. Each family × seed (`--seeds`) trains with its rate into RUNS/FAMILY/seed_S (finished runs are reused: the
   sweep resumes where it stopped).
3. Each run is consolidated for 15% of its steps (`dept consolidate`: SPEC/SPEC-OPT from a fresh global table at
   the peak rate, the others from their own table at half of it), so every family ends as one global-vocabulary
   model scored with the same tokenizer.

Reported (bench/results/quality.json, and a Markdown table printed): per source and family, bits per byte mean ±
std over seeds (trained and unseen sources), perplexity per token (comparable only within one tokenizer), the
same after consolidation, and each family's mean bits-per-byte gap to the best STD as a percentage of per-byte
perplexity (2^bpb): the tokenizer-agnostic form of the paper's "x% lower perplexity".
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

FAMILIES = {  # name -> overrides
    "std_t0": {"train.variant": "std", "train.std_temperature": 0.0},
    "std_t0.3": {"train.variant": "std", "train.std_temperature": 0.3},
    "std_t1": {"train.variant": "std", "train.std_temperature": 1.0},
    "act": {"train.variant": "act", "train.std_temperature": 0.3},
    "glob": {"train.variant": "glob"},
    "trim": {"train.variant": "trim"},
    "spec": {"train.variant": "spec"},
    "spec_opt": {"train.variant": "spec_opt"},
}
TUNED_AS = {"std_t0": "std_t0.3", "std_t1": "std_t0.3"}  # families that take another family's tuned rate
CORPORA = {"bench": ROOT / "configs" / "bench.yaml", "demo": ROOT / "configs" / "demo.yaml"}


def shape_overrides(a) -> dict:
    """The model and budget at --scale s: width 128·s (multiple of 64), 2·s blocks, the same N and rounds."""
    d_model = max(64, int(round(128 * a.scale / 64)) * 64)
    return {
        "model.d_model": d_model, "model.n_layers": max(2, round(2 * a.scale)), "model.n_heads": d_model // 32,
        "model.max_seq_len": a.seq_len, "train.seq_len": a.seq_len, "train.batch_size": a.batch,
        "train.rounds": a.rounds, "train.local_steps": a.local_steps, "train.sources_per_round": a.sources_per_round,
        "train.std_batch_size": 0, "train.inner.warmup_steps": max(1, a.rounds * a.local_steps // 20),
        "train.outer.kind": "fedavg", "train.device": a.device, "train.precision": a.precision,
        "train.keep_checkpoints": 1, "eval.max_bytes": a.eval_bytes,
        "eval.unseen_adapt_steps": a.unseen_adapt_steps,
        "data.tokenizer.global.vocab_size": a.global_vocab, "data.tokenizer.per_source.vocab_size": a.own_vocab,
        "data.tokenizer.global.seed": 0,  # one prepared corpus whatever the run's seed
        "data.dir": str(ROOT / ".dept_cache" / f"quality_{a.corpus}_{a.global_vocab}_{a.own_vocab}"),
    }


def build_config(a, family: str, seed: int, lr: float, run_dir: Path, eval_every: int = 0):
    from dept.config import load_config

    settings = {**shape_overrides(a), **FAMILIES[family], "run.seed": seed, "train.inner.lr": lr,
                "run.dir": str(run_dir), "eval.every": eval_every}
    return load_config(CORPORA[a.corpus], [f"{k}={v}" for k, v in settings.items()])


def train_once(cfg, log) -> dict:
    """Train (or reuse a finished run of the same settings); the run's results.json."""
    from dept.checkpoint import latest_checkpoint
    from dept.training import resume_config, run_training

    results = cfg.run_dir / "results.json"
    if results.is_file() and resume_config(cfg.run_dir).training_fingerprint() == cfg.training_fingerprint():
        return json.loads(results.read_text())
    if cfg.run_dir.exists() and latest_checkpoint(cfg.run_dir) is None:
        import shutil

        shutil.rmtree(cfg.run_dir)  # stopped before its first checkpoint: start it again
    run_training(cfg, resume=latest_checkpoint(cfg.run_dir) is not None, log=log)
    return json.loads(results.read_text())


def consolidate_once(run_dir: Path, log) -> dict:
    from dept.posttrain.consolidate import consolidate
    from dept.posttrain.folder import is_model_folder

    out = run_dir / "consolidated"
    report = out / "consolidation.json"
    if is_model_folder(out) and report.is_file():
        return json.loads(report.read_text())
    resume = out.with_name(f".{out.name}.progress").exists()
    return consolidate(run_dir, out, resume=resume, log=log).to_dict()


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def per_byte_gain(bpb: float, reference: float) -> float:
    """How much lower the per-byte perplexity 2^bpb is than the reference's, in percent (positive = better)."""
    return 100 * (1 - 2 ** (bpb - reference))


def summarize(runs: dict[str, dict[int, dict]], consolidated: dict[str, dict[int, dict]]) -> dict:
    families = {}
    for family, by_seed in runs.items():
        first = next(iter(by_seed.values()))
        sources = [(r["source"], r["unseen"]) for r in first["results"]]
        rows = {}
        for name, unseen in sources:
            per_seed = [next(r for r in res["results"] if r["source"] == name) for res in by_seed.values()]
            cons = [next((x for x in c["rows"] if x["source"] == name), None)
                    for c in consolidated.get(family, {}).values()]
            rows[name] = {"unseen": unseen, "bpb": mean_std([r["bpb"] for r in per_seed]),
                          "perplexity": mean_std([r["perplexity"] for r in per_seed]),
                          "consolidated_bpb": mean_std([c["after_bpb"] for c in cons if c])}
        families[family] = {
            "seeds": sorted(by_seed), "sources": rows,
            "mean_bpb": mean_std([res["mean_bpb"] for res in by_seed.values()]),
            "mean_bpb_unseen": mean_std([res.get("mean_bpb_unseen", math.nan) for res in by_seed.values()]),
            "consolidated_mean_bpb": mean_std([c["mean_bpb_after"] for c in consolidated.get(family, {}).values()]),
            "bytes_moved": mean_std([res.get("bytes_moved", math.nan) for res in by_seed.values()]),
        }
    std_families = [f for f in families if f.startswith("std")]
    if std_families:
        best_std = min(std_families, key=lambda f: families[f]["mean_bpb"][0])
        ref = families[best_std]["mean_bpb"][0]
        ref_unseen = families[best_std]["mean_bpb_unseen"][0]
        for f in families.values():
            f["gain_vs_best_std_pct"] = per_byte_gain(f["mean_bpb"][0], ref)
            f["gain_vs_best_std_unseen_pct"] = per_byte_gain(f["mean_bpb_unseen"][0], ref_unseen)
        return {"best_std": best_std, "families": families}
    return {"best_std": None, "families": families}


def markdown(summary: dict) -> str:
    fams = list(summary["families"])
    out = ["| source | " + " | ".join(fams) + " |", "|---" * (len(fams) + 1) + "|"]

    def cell(ms):
        return "n/a" if math.isnan(ms[0]) else f"{ms[0]:.4f} ± {ms[1]:.4f}"

    first = summary["families"][fams[0]]["sources"]
    for name, row in first.items():
        label = name + (" (unseen)" if row["unseen"] else "")
        out.append(f"| {label} | " + " | ".join(cell(summary["families"][f]["sources"][name]["bpb"]) for f in fams)
                   + " |")
    for key, label in (("mean_bpb", "mean, trained"), ("mean_bpb_unseen", "mean, unseen"),
                       ("consolidated_mean_bpb", "mean, trained, consolidated")):
        out.append(f"| **{label}** | " + " | ".join(cell(summary["families"][f][key]) for f in fams) + " |")
    if summary["best_std"]:
        out.append(f"| per-byte perplexity vs {summary['best_std']} | " + " | ".join(
            f"{summary['families'][f]['gain_vs_best_std_pct']:+.1f}%" for f in fams) + " |")
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", choices=sorted(CORPORA), default="bench")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of " + ",".join(FAMILIES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tune-seed", type=int, default=100)
    p.add_argument("--tune-lrs", default="3e-3,1e-2", help="inner learning rates tried per family")
    p.add_argument("--tune-extend", type=int, default=2, help="extra rates tried past a grid edge that wins")
    p.add_argument("--scale", type=float, default=1.0, help="model width 128·s, 2·s blocks")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--local-steps", type=int, default=20)
    p.add_argument("--sources-per-round", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--global-vocab", type=int, default=8192)
    p.add_argument("--own-vocab", type=int, default=2048)
    p.add_argument("--eval-bytes", type=int, default=32768)
    p.add_argument("--unseen-adapt-steps", type=int, default=20)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--no-consolidate", action="store_true")
    p.add_argument("--curve-every", type=int, default=2,
                   help="the first seed's runs evaluate every this many rounds (bits-per-byte curves; 0 = only at "
                   "the end)")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "quality")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality.json")
    return p


def family_markdown(out: dict) -> str:
    """One row per family: tuned rate, mean bits per byte (trained, unseen, after consolidation) as mean ± std over
    seeds, the per-byte perplexity gap to the best STD, and the bytes the run moved."""
    summary = out["summary"]
    rows = ["| family | inner lr | bits/byte, trained | bits/byte, unseen | consolidated, trained | "
            f"per-byte perplexity vs {summary['best_std']} | perplexity per token, trained | GB moved |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def cell(ms, digits=3):
        return "n/a" if ms is None or math.isnan(ms[0]) else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"

    for name, f in summary["families"].items():
        gain = f.get("gain_vs_best_std_pct")
        rows.append(f"| {name} | {out['tuned_lr'].get(name, math.nan):g} | {cell(f['mean_bpb'])} | "
                    f"{cell(f['mean_bpb_unseen'])} | {cell(f['consolidated_mean_bpb'])} | "
                    + ("n/a" if gain is None or math.isnan(gain) else f"{gain:+.1f}%")
                    + f" | {statistics.fmean(r['perplexity'][0] for r in f['sources'].values() if not r['unseen']):.1f}"
                    + f" | {f['bytes_moved'][0] / 1e9:,.2f} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    if sys.argv[1:2] == ["--tables"]:  # print the tables of a finished sweep's JSON
        out = json.loads(Path(sys.argv[2]).read_text())
        print(family_markdown(out))
        print(out["markdown"])
        return
    a = build_parser().parse_args()

    from dept.data.prepare import prepare

    families = [f.strip() for f in a.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        sys.exit(f"error: unknown families {unknown} (choose from {', '.join(FAMILIES)})")
    seeds = [int(s) for s in a.seeds.split(",")]
    lrs = [float(x) for x in a.tune_lrs.split(",")]
    root = a.runs_dir / f"{a.corpus}_x{a.scale:g}"
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, flush=True)

    def quiet(_msg: str) -> None:
        pass

    prepare(build_config(a, families[0], 0, lrs[0], root / "prepare"), log=log)

    tuned: dict[str, float] = {}
    tuning: dict[str, dict[str, float]] = {}
    for family in families:
        source = TUNED_AS.get(family, family)
        if source in tuned:
            tuned[family] = tuned[source]
            continue
        scores = {}

        def score(lr: float, source: str = source, scores: dict = scores) -> None:
            res = train_once(build_config(a, source, a.tune_seed, lr, root / "tune" / source / f"lr_{lr:g}"), quiet)
            scores[lr] = res["mean_bpb"]
            log(f"tune {source}: lr {lr:g} -> mean bits/byte {res['mean_bpb']:.4f}")

        if len(lrs) > 1:
            for lr in lrs:
                score(lr)
            # a best rate on the grid's edge is not a tuned rate: step outward (by the grid's own ratio) until
            # the best is interior, at most --tune-extend times
            ratio = lrs[-1] / lrs[-2]
            for _ in range(a.tune_extend):
                best = min(scores, key=lambda lr: scores[lr])
                if best == max(scores):
                    score(float(f"{best * ratio:.3g}"))
                elif best == min(scores):
                    score(float(f"{best / ratio:.3g}"))
                else:
                    break
        else:
            scores[lrs[0]] = math.nan
        best = min(scores, key=lambda lr: scores[lr]) if len(lrs) > 1 else lrs[0]
        tuned[source] = tuned[family] = best
        tuning[source] = {f"{lr:g}": s for lr, s in sorted(scores.items())}
        log(f"tune {source}: lr {best:g}")

    runs: dict[str, dict[int, dict]] = {}
    consolidated: dict[str, dict[int, dict]] = {}
    for family in families:
        for seed in seeds:
            run_dir = root / family / f"seed_{seed}"
            t1 = time.perf_counter()
            curve = a.curve_every if seed == seeds[0] else 0  # one seed per family evaluates along the way
            runs.setdefault(family, {})[seed] = res = train_once(build_config(a, family, seed, tuned[family],
                                                                              run_dir, curve), quiet)
            line = f"{family} seed {seed}: mean bits/byte {res['mean_bpb']:.4f}"
            if not a.no_consolidate:
                consolidated.setdefault(family, {})[seed] = c = consolidate_once(run_dir, quiet)
                line += f", consolidated {c['mean_bpb_after']:.4f}"
            log(f"{line}  ({time.perf_counter() - t1:.0f}s)")

    summary = summarize(runs, consolidated)
    table = markdown(summary)
    print(table)
    cfg = build_config(a, families[0], seeds[0], tuned[families[0]], root / "x")
    out = {"command": "python bench/quality.py " + " ".join(sys.argv[1:]), "cpu": cpu_model(),
           "wall_s": round(time.perf_counter() - t0, 1), "corpus": a.corpus, "scale": a.scale,
           "model": cfg.model.model_dump(mode="json"),
           "budget": {"rounds": a.rounds, "local_steps": a.local_steps, "sources_per_round": a.sources_per_round,
                      "batch": a.batch, "seq_len": a.seq_len, "sequential_steps": a.rounds * a.local_steps},
           "tuned_lr": tuned, "tuning": tuning, "seeds": seeds, "summary": summary, "markdown": table}
    print(family_markdown(out))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2, allow_nan=True) + "\n")
    log(f"written to {a.out} ({out['wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
