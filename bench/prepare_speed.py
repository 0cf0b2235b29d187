"""Tokenization throughput of `dept prepare`: encoding MB/s with one thread against all cores.

    python3 bench/prepare_speed.py                          # the demo corpus (configs/demo.yaml)
    python3 bench/prepare_speed.py --config configs/bench.yaml   # the 119 MB benchmark corpus (build it first)

Each measurement runs `prepare` in a fresh subprocess into a temporary data folder (so nothing is skipped), with
RAYON_NUM_THREADS set before `tokenizers` starts its thread pool. Encoding MB/s counts the UTF-8 bytes of every
split encoded with both tokenizers (global and the source's own) divided by the time spent in `encode_batch`.
Results go to --out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys
from dept.config import load_config
from dept.data.prepare import prepare
cfg = load_config(sys.argv[1], [f"data.dir={sys.argv[2]}"])
r = prepare(cfg, log=lambda *_: None, force=True)
print(json.dumps({"encoded_mb": r.encoded_bytes / 1e6, "encode_s": r.encode_s, "total_s": r.total_s,
                  "mb_per_s": r.encode_mb_per_s, "sources": len(r.prepared)}))
"""


def run(config: str, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, config, str(Path(tmp) / "data")], env=env,
                             capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--out", default="bench/results/prepare_speed.json")
    a = p.parse_args()
    one = run(a.config, 1)
    every = run(a.config, None)
    cores = os.cpu_count()
    print(f"{a.config}: {every['sources']} sources, {every['encoded_mb']:.1f} MB encoded (both tokenizers)")
    print(f"{'threads':>8} {'encode MB/s':>12} {'encode s':>9} {'prepare s':>10}")
    for label, r in (("1", one), (str(cores), every)):
        print(f"{label:>8} {r['mb_per_s']:>12.2f} {r['encode_s']:>9.1f} {r['total_s']:>10.1f}")
    print(f"speed-up with {cores} cores: {every['mb_per_s'] / one['mb_per_s']:.2f}x")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"config": a.config, "cores": cores, "one_thread": one, "all_cores": every},
                                      indent=2) + "\n")


if __name__ == "__main__":
    main()
