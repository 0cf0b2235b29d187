"""Peak memory of DEPT training vs the number of sources K (sources_per_round fixed): it should stay flat.

Command (from the repository root):

    python3 bench/memory_vs_sources.py
    python3 bench/memory_vs_sources.py --sources 2 4 8 16 32 --per-round 2 --rounds 4 \
        --out bench/results/memory_vs_sources.json
    # enough rounds that most sources get sampled (their state on disk then grows with K):
    python3 bench/memory_vs_sources.py --rounds auto --out bench/results/memory_vs_sources_auto.json

For each K, in a temporary folder (--workdir to keep it):
  1. a synthetic corpus of K sources (each its own random lexicon; --docs docs of --words words per source);
  2. a config like tests/conftest.py's tiny_tree with K sources, built with
     `dept.config.config_from_dict(tree, "bench", base_dir=folder)`: variant spec_opt, d_model 128, 2 layers,
     global vocab 2048, per-source vocab 1024, rounds 4, local_steps 3, batch 4, seq_len 64, sources_per_round 2;
  3. `dept.data.prepare.prepare(cfg)` in one FRESH subprocess;
  4. `dept.training.Trainer(cfg).train()` in another FRESH subprocess, which reports
       - train_peak:  VmHWM of the training phase only: the high-water mark is reset (echo 5 >
                      /proc/self/clear_refs) after imports and Trainer construction, read after train() returns
                      (falls back to ru_maxrss where the reset is not allowed);
       - proc_peak:   ru_maxrss of the whole training subprocess (imports included);
       - base:        VmRSS just before train(), and VmRSS after every round;
     torch._dynamo (which torch.optim imports lazily on the first AdamW(): ~100 MB, the same for every K) is
     imported before the reset unless --no-preimport;
  5. the bytes and number of files of per-source state under RUN/sources (what waits on disk).

Printed: a table K -> peak RSS MB (training phase and whole process), on-disk source state MB / files / sources
holding state, and the ratio peak(K=max)/peak(K=min). JSON goes to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MB = 1024 * 1024


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sources", type=int, nargs="+", default=[2, 4, 8, 16, 32], help="values of K")
    p.add_argument("--per-round", type=int, default=2, help="train.sources_per_round")
    p.add_argument("--rounds", default="4",
                   help="train.rounds, or 'auto' = max(4, 2*K/per_round) so that most sources get sampled")
    p.add_argument("--local-steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--global-vocab", type=int, default=2048)
    p.add_argument("--source-vocab", type=int, default=1024)
    p.add_argument("--variant", default="spec_opt")
    p.add_argument("--docs", type=int, default=60, help="documents per source")
    p.add_argument("--words", type=int, default=150, help="words per document")
    p.add_argument("--lexicon", type=int, default=800, help="distinct random words per source")
    p.add_argument("--threads", type=int, default=0, help="train.threads (0 = all cores)")
    p.add_argument("--workdir", default=None, help="keep the corpora/runs here (default: a temp folder, removed)")
    p.add_argument("--out", default="bench/results/memory_vs_sources.json")
    p.add_argument("--no-preimport", dest="preimport", action="store_false",
                   help="do not import torch._dynamo before the high-water-mark reset (then its ~100 MB lands "
                        "in the training peak)")
    # internal: the child processes
    p.add_argument("--phase", choices=["prepare", "train"], help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# child side


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load_cfg(tree_path: str):
    from dept.config import config_from_dict

    tree = json.loads(Path(tree_path).read_text())
    return config_from_dict(tree, "bench", base_dir=Path(tree_path).parent)


def child(a: argparse.Namespace) -> int:
    cfg = _load_cfg(a.tree)
    t0 = time.perf_counter()
    if a.phase == "prepare":
        from dept.data.prepare import prepare

        prepare(cfg, log=lambda *_: None)
        out = {"prepare_s": time.perf_counter() - t0,
               "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    else:
        from dept.training import Trainer

        per_round: list[int] = []

        def log(msg: str) -> None:
            if msg.startswith("round "):
                per_round.append(_status_kb("VmRSS") or 0)

        trainer = Trainer(cfg, log=log)
        if a.preimport:
            # torch.optim's first AdamW() lazily imports torch._dynamo (~2 s, ~100 MB RSS): a one-off cost of
            # torch, the same for every K. Import it before the reset so the peak shows what training holds.
            import torch._dynamo  # noqa: F401
        import gc

        gc.collect()
        reset_ok = _reset_hwm()
        base = _status_kb("VmRSS")
        hwm_after_reset = _status_kb("VmHWM")
        t0 = time.perf_counter()
        trainer.train()
        out = {
            "train_s": time.perf_counter() - t0,
            "hwm_reset_ok": reset_ok and hwm_after_reset is not None and base is not None
            and hwm_after_reset <= base + 1024,
            "base_rss_kb": base,
            "train_hwm_kb": _status_kb("VmHWM"),
            "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "rss_after_round_kb": per_round,
            "end_rss_kb": _status_kb("VmRSS"),
        }
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# parent side


def write_corpus(root: Path, k: int, a) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(k):
        rng = random.Random(1000 + s)
        lexicon = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
                   for _ in range(a.lexicon)]
        with open(root / f"s{s:02d}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(a.docs):
                f.write(json.dumps({"text": " ".join(rng.choice(lexicon) for _ in range(a.words))}) + "\n")


def rounds_for(k: int, a) -> int:
    if a.rounds == "auto":
        return max(4, math.ceil(2 * k / a.per_round))
    return int(a.rounds)


def make_tree(root: Path, k: int, a) -> dict:
    return {
        "run": {"dir": str(root / "run"), "seed": 0},
        "data": {
            "dir": str(root / "prepared"),
            "val_fraction": 0.1,
            "sources": [{"name": f"s{s:02d}", "files": [str(root / "corpus" / f"s{s:02d}.jsonl")]}
                        for s in range(k)],
            "tokenizer": {"global": {"vocab_size": a.global_vocab}, "per_source": {"vocab_size": a.source_vocab}},
        },
        "model": {"d_model": a.d_model, "n_layers": a.layers, "n_heads": a.heads, "max_seq_len": a.seq_len},
        "train": {"variant": a.variant, "rounds": rounds_for(k, a), "local_steps": a.local_steps,
                  "batch_size": a.batch, "seq_len": a.seq_len, "sources_per_round": a.per_round,
                  "inner": {"warmup_steps": 2}, "device": "cpu", "threads": a.threads},
        "eval": {"max_bytes": 4096, "batch_size": 8},
    }


def run_child(phase: str, tree_path: Path, preimport: bool = True) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--tree", str(tree_path)]
    if not preimport:
        cmd.append("--no-preimport")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{phase} subprocess failed (exit {proc.returncode}) for {tree_path}")
    return json.loads(lines[-1][len("RESULT "):])


def disk_state(run_dir: Path) -> dict:
    root = run_dir / "sources"
    files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
    tensors = [p.stat().st_size for p in files if p.suffix == ".safetensors"]
    per_source = {}
    for p in files:
        per_source.setdefault(p.parent.name, 0)
        per_source[p.parent.name] += p.stat().st_size
    return {"bytes": sum(p.stat().st_size for p in files), "files": len(files),
            "safetensors": sum(p.suffix == ".safetensors" for p in files), "sources_with_state": len(per_source),
            "max_source_bytes": max(per_source.values(), default=0),
            "version_bytes": sum(tensors) / len(tensors) if tensors else 0.0}


def vocab_sizes(prepared: Path) -> tuple[int, int, int]:
    manifest = json.loads((prepared / "manifest.json").read_text())
    own = [json.loads((prepared / "sources" / n / "meta.json").read_text())["vocab_size"]["own"]
           for n in manifest["sources"]]
    return int(manifest["global_vocab_size"]), min(own), max(own)


def parent(a: argparse.Namespace) -> int:
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="dept_mem_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for k in a.sources:
            if k < a.per_round:
                raise SystemExit(f"K={k} is below sources_per_round={a.per_round}")
            root = work / f"K{k:03d}"
            shutil.rmtree(root, ignore_errors=True)
            write_corpus(root / "corpus", k, a)
            tree_path = root / "tree.json"
            tree_path.write_text(json.dumps(make_tree(root, k, a), indent=1))
            prep = run_child("prepare", tree_path)
            train = run_child("train", tree_path, a.preimport)
            disk = disk_state(root / "run")
            gv, own_min, own_max = vocab_sizes(root / "prepared")
            peak_kb = train["train_hwm_kb"] if train["hwm_reset_ok"] else train["ru_maxrss_kb"]
            row = {"K": k, "rounds": rounds_for(k, a), "train_peak_mb": peak_kb / 1024,
                   "proc_peak_mb": train["ru_maxrss_kb"] / 1024, "base_rss_mb": (train["base_rss_kb"] or 0) / 1024,
                   "train_growth_mb": (peak_kb - (train["base_rss_kb"] or 0)) / 1024,
                   "disk_mb": disk["bytes"] / MB, "disk_files": disk["files"],
                   "sources_with_state": disk["sources_with_state"],
                   "max_source_state_mb": disk["max_source_bytes"] / MB,
                   # what holding one state version of EVERY source in RAM would take (embedding + AdamW moments)
                   "all_sources_in_ram_mb": k * disk["version_bytes"] / MB,
                   "global_vocab": gv, "own_vocab": [own_min, own_max],
                   "prepare_s": prep["prepare_s"], "train_s": train["train_s"], "hwm_reset_ok": train["hwm_reset_ok"],
                   "rss_after_round_mb": [x / 1024 for x in train["rss_after_round_kb"]]}
            rows.append(row)
            print(f"K={k:3d}: train peak {row['train_peak_mb']:7.1f} MB (process {row['proc_peak_mb']:.1f} MB), "
                  f"on disk {row['disk_mb']:6.1f} MB in {row['disk_files']} files for "
                  f"{row['sources_with_state']} sources  [prepare {prep['prepare_s']:.1f}s, "
                  f"train {train['train_s']:.1f}s]", flush=True)
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)

    first, last = rows[0], rows[-1]
    ratio = last["train_peak_mb"] / first["train_peak_mb"]
    ratio_proc = last["proc_peak_mb"] / first["proc_peak_mb"]
    reset = all(r["hwm_reset_ok"] for r in rows)
    print()
    print(f"DEPT training peak RSS vs number of sources K  |  variant {a.variant}, sources_per_round {a.per_round}, "
          f"d_model {a.d_model}, {a.layers} layers, global vocab {a.global_vocab}, per-source vocab "
          f"{a.source_vocab}, local_steps {a.local_steps}, batch {a.batch}, seq_len {a.seq_len}")
    print("train peak = VmHWM of the training phase alone (high-water mark reset after imports + Trainer init)"
          if reset else "train peak = ru_maxrss of the training subprocess (VmHWM reset not available)")
    hdr = (f"{'K':>4}{'rounds':>8}{'train peak MB':>15}{'growth MB':>11}{'process peak MB':>17}"
           f"{'disk state MB':>15}{'files':>7}{'srcs w/ state':>15}{'MB/src':>8}{'K x state MB':>14}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['K']:>4}{r['rounds']:>8}{r['train_peak_mb']:>15.1f}{r['train_growth_mb']:>11.1f}"
              f"{r['proc_peak_mb']:>17.1f}{r['disk_mb']:>15.2f}{r['disk_files']:>7}{r['sources_with_state']:>15}"
              f"{r['max_source_state_mb']:>8.2f}{r['all_sources_in_ram_mb']:>14.1f}")
    print("growth = train peak - RSS before train();  MB/src = largest per-source folder (all kept versions);  "
          "K x state = one state version (embedding + AdamW moments) for every source, i.e. what keeping them "
          "all in memory would add")
    print(f"peak(K={last['K']}) / peak(K={first['K']}): training phase {ratio:.3f}, whole process {ratio_proc:.3f}; "
          f"on-disk state {last['disk_mb'] / max(first['disk_mb'], 1e-9):.1f}x")
    result = {"args": {k: v for k, v in vars(a).items() if k not in ("phase", "tree")},
              "python": sys.version.split()[0], "rows": rows,
              "ratio_train_peak_last_over_first": ratio, "ratio_process_peak_last_over_first": ratio_proc}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


def main(argv=None) -> int:
    a = parse_args(argv)
    return child(a) if a.phase else parent(a)


if __name__ == "__main__":
    sys.exit(main())
