"""Peak memory and throughput of `dept prepare` as a source grows, against raw `tokenizers` encode_batch.

    python bench/prepare_memory.py                                    # 0.1 and 1 GB of text
    nice -n 19 python bench/prepare_memory.py --sizes 4 --cache DIR   # 4 GB (about 1.5 hours on 2 cores)

For each size a one-source corpus of that many UTF-8 bytes of text is written (a .jsonl under --cache, deleted
afterwards): the documents of the bundled demo corpus (`data/demo/*.jsonl`, 8 sources in 4 scripts and code),
taken in turn, over and over. `dept prepare` runs on it in a fresh subprocess, with the demo's tokenizer settings
(global BPE 8,192, own BPE 2,048), into a fresh data folder; its peak RSS is the largest of the process and of its
counting workers (getrusage). The baseline, each pass in a fresh subprocess: the same two tokenizers (trained first
from the corpus's leading documents, as prepare trains them: the bench checks they are byte-identical) encode every
document of the same file in the same chunks with `encode_batch`, only those calls timed; once before prepare and
once after (the machine is shared and its speed drifts: the mean is the baseline), then once with
`encode_batch_fast` (no offsets, what prepare calls). MB/s counts each byte of text once, though prepare and the
baselines encode it with both tokenizers. Rows go to --out as JSON (rows of other sizes there are kept), with the
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from machine import cpu_model  # noqa: E402

GB = 10**9

PREPARE = """
import json, resource, sys, time
from dept.config import load_config
from dept.data.prepare import prepare
t0 = time.perf_counter()
r = prepare(load_config(sys.argv[1]), log=lambda *_: None)
wall = time.perf_counter() - t0
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"seconds": wall, "count_s": r.count_s, "tokenizer_s": r.tokenizer_s, "stream_s": r.stream_s,
                  "encode_s": r.encode_s, "peak_rss_mb": peak / 1024}))
"""

RAW = """
import json, sys, time
from tokenizers import Tokenizer
toks = [Tokenizer.from_file(p) for p in sys.argv[2:4]]
method, chunk_chars = sys.argv[4], int(sys.argv[5])
encode_s, n_bytes, docs, chars = 0.0, 0, [], 0

def encode(docs):
    global encode_s
    t0 = time.perf_counter()
    for tok in toks:
        getattr(tok, method)(docs, add_special_tokens=False)
    encode_s += time.perf_counter() - t0

with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        text = json.loads(line)["text"]
        n_bytes += len(text.encode("utf-8"))
        docs.append(text)
        chars += len(text)
        if chars >= chunk_chars:
            encode(docs)
            docs, chars = [], 0
if docs:
    encode(docs)
print(json.dumps({"encode_s": encode_s, "bytes": n_bytes}))
"""


def demo_documents() -> list[str]:
    """The demo corpus's documents, its sources interleaved (one document of each in turn)."""
    per_source = [[json.loads(line)["text"] for line in p.read_text(encoding="utf-8").splitlines()]
                  for p in sorted((ROOT / "data" / "demo").glob("*.jsonl"))]
    longest = max(len(docs) for docs in per_source)
    return [docs[i] for i in range(longest) for docs in per_source if i < len(docs)]


def write_corpus(path: Path, n_bytes: int) -> int:
    """A .jsonl of the demo documents in turn until their text reaches `n_bytes`; the bytes of text written."""
    lines = [(json.dumps({"text": d}, ensure_ascii=False) + "\n").encode("utf-8") for d in demo_documents()]
    sizes = [len(d.encode("utf-8")) for d in demo_documents()]
    written = 0
    with open(path, "wb", buffering=1 << 22) as f:
        while written < n_bytes:
            for line, size in zip(lines, sizes, strict=True):
                f.write(line)
                written += size
                if written >= n_bytes:
                    break
    return written


def write_config(folder: Path, corpus: Path, chunk_chars: int, name: str = "prepared") -> Path:
    config = folder / f"{name}.yaml"
    config.write_text(f"""\
run: {{dir: {folder / 'run'}, seed: 0}}
data:
  dir: {folder / name}
  chunk_chars: {chunk_chars}
  sources:
    - {{name: bench, files: [{corpus}]}}
  tokenizer:
    global: {{kind: bpe, vocab_size: 8192, temperature: 0.3}}
    per_source: {{kind: bpe, vocab_size: 2048}}
""", encoding="utf-8")
    return config


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def raw_pass(corpus: Path, toks: list[Path], method: str, chunk_chars: int, n_bytes: int) -> float:
    raw = child(RAW, corpus, *toks, method, chunk_chars)
    assert raw["bytes"] == n_bytes, (raw["bytes"], n_bytes)
    return raw["encode_s"]


def measure(size_gb: float, cache: Path, chunk_chars: int) -> dict:
    """prepare, between two raw encode_batch passes (their mean is the baseline: the machine is shared, its speed
    drifts), then a raw encode_batch_fast pass."""
    folder = Path(tempfile.mkdtemp(prefix=f"prepare_{size_gb}gb_", dir=cache))
    try:
        corpus = folder / "corpus.jsonl"
        n_bytes = write_corpus(corpus, int(size_gb * GB))
        config = write_config(folder, corpus, chunk_chars)
        # The baseline encodes with the tokenizers prepare trains. They train on the leading 20M characters of the
        # source, the same in every corpus here (the same documents in the same order): a 64 MB one gives them.
        write_corpus(folder / "head.jsonl", 64 * 10**6)
        child(PREPARE, write_config(folder, folder / "head.jsonl", chunk_chars, "tokenizers"))
        toks = [folder / "tokenizers" / "global_tokenizer.json", folder / "tokenizers" / "sources" / "bench" /
                "tokenizer.json"]
        before = raw_pass(corpus, toks, "encode_batch", chunk_chars, n_bytes)
        prep = child(PREPARE, config)
        after = raw_pass(corpus, toks, "encode_batch", chunk_chars, n_bytes)
        fast = raw_pass(corpus, toks, "encode_batch_fast", chunk_chars, n_bytes)
        for name in ("global_tokenizer.json", "sources/bench/tokenizer.json"):
            same = (folder / "prepared" / name).read_bytes() == (folder / "tokenizers" / name).read_bytes()
            assert same, f"{name}: the baseline's tokenizer is not prepare's"
        mb = n_bytes / 1e6
        raw_s = (before + after) / 2
        return {"size_gb": size_gb, "bytes": n_bytes, "file_bytes": corpus.stat().st_size, **prep,
                "mb_per_s": mb / prep["seconds"], "stream_mb_per_s": mb / prep["stream_s"],
                "raw_encode_batch_s": [before, after], "raw_mb_per_s": mb / raw_s,
                "ratio": mb / prep["seconds"] / (mb / raw_s), "stream_ratio": raw_s / prep["stream_s"],
                "raw_fast_s": fast, "raw_fast_mb_per_s": mb / fast, "ratio_fast": fast / prep["seconds"],
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="0.1,1", help="GB of text, comma-separated")
    p.add_argument("--cache", default=tempfile.gettempdir(), help="Folder for the corpora (deleted after)")
    p.add_argument("--chunk-chars", type=int, default=2_000_000, help="data.chunk_chars (and the raw chunks)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "prepare_memory.json"))
    a = p.parse_args()
    import tokenizers
    import torch

    out = Path(a.out)
    old = json.loads(out.read_text()) if out.is_file() else {}
    sizes = [float(s) for s in a.sizes.split(",")]
    result = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
              "tokenizers": tokenizers.__version__, "chunk_chars": a.chunk_chars,
              "sizes": [r for r in old.get("sizes", []) if r["size_gb"] not in sizes]}  # other sizes' rows kept
    print(f"{'GB':>5} {'seconds':>8} {'MB/s':>6} {'peak RSS MB':>11} {'raw MB/s':>8} {'ratio':>6} "
          f"{'stream MB/s':>11} {'stream ratio':>12} {'raw fast MB/s':>13} {'ratio':>6}")
    for size in sizes:
        row = measure(size, Path(a.cache), a.chunk_chars)
        row["command"] = " ".join(["python", *sys.argv])
        result["sizes"] = sorted([*result["sizes"], row], key=lambda r: r["size_gb"])
        print(f"{size:>5} {row['seconds']:>8.1f} {row['mb_per_s']:>6.2f} {row['peak_rss_mb']:>11.0f} "
              f"{row['raw_mb_per_s']:>8.2f} {row['ratio']:>6.3f} {row['stream_mb_per_s']:>11.2f} "
              f"{row['stream_ratio']:>12.3f} {row['raw_fast_mb_per_s']:>13.2f} {row['ratio_fast']:>6.3f}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
