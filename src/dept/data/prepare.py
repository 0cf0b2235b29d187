"""`dept prepare`: read sources, split, train tokenizers, encode token shards; skip what has not changed.

Every source is streamed, so memory stays flat however large a source is:

1. a counting pass over every source to prepare (its files in a process pool, one file per task) checks every
   input and counts each split's documents, characters and bytes, before anything is written;
2. the global tokenizer trains on the temperature-balanced mixture of the trained sources (shares from their true
   sizes), each source read up to the leading `global.sample_chars` characters of its train split;
3. per source: its own tokenizer trains on the leading `per_source.sample_chars` of its train split, then one pass
   encodes both splits with both tokenizers, `data.chunk_chars` characters per `encode_batch` call (all cores),
   while a thread reads and splits the next documents, and writes shards of `data.shard_tokens` tokens as it goes.

A source is redone only when its inputs (paths, sizes, mtimes), its settings or the global tokenizer change. It is
written into `partial/NAME/` and renamed into place when complete; a prepare stopped part-way resumes
there, from its last complete shard (`dept.data.shards`).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from dept.atomic_io import remove_leftovers, sha256_file, write_json_atomic, write_text_atomic
from dept.config import Config, SourceConfig
from dept.data.documents import (
    InputCount,
    SourceCount,
    count_input,
    input_signature,
    merge_counts,
    sample_documents,
    source_documents,
    source_inputs,
)
from dept.data.integrity import checksums, damaged
from dept.data.prepared import GLOBAL, GLOBAL_TOKENIZER, OWN
from dept.data.shards import (
    PARTIAL,
    SPLITS,
    VOCABS,
    PartialSource,
    SplitWriter,
    json_or_none,
    save_npy,
    seen_ids,
    trim_vocab,
)
from dept.data.tokenizer import (
    EOS,
    EOS_ID,
    balanced_mixture,
    capped,
    encode_batch,
    load_tokenizer,
    pack_encodings,
    token_dtype,
    train_tokenizer,
)
from dept.errors import DataError
from dept.folder_lock import FolderLock

PROGRESS = "prepare_progress.json"  # DATA_DIR: the global tokenizer of a prepare under way (gone when it ends)


@dataclass
class PrepareReport:
    prepared: list[str]
    skipped: list[str]
    encoded_bytes: int  # UTF-8 bytes encoded, counted once per tokenizer
    encode_s: float  # time inside encode_batch
    total_s: float
    count_s: float = 0.0  # the counting pass
    tokenizer_s: float = 0.0  # reading samples and training tokenizers
    stream_s: float = 0.0  # the encoding passes: reading, encoding, writing shards

    @property
    def stream_mb_per_s(self) -> float:
        """MB of text (each byte once) per second of the encoding passes."""
        return self.encoded_bytes / 2 / 1e6 / self.stream_s if self.stream_s > 0 else 0.0

    @property
    def encode_mb_per_s(self) -> float:
        return self.encoded_bytes / 1e6 / self.encode_s if self.encode_s > 0 else 0.0


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _megabytes(texts: list[str]) -> str:
    return f"{sum(len(t.encode('utf-8')) for t in texts) / 1e6:.2f} MB"


# ---- counting pass -------------------------------------------------------------------------------------------------

def _count_one(args: tuple[SourceConfig, str, Path | str, float, int]) -> InputCount:
    source, base_dir, item, val_fraction, min_doc_chars = args
    return count_input(source, Path(base_dir), item, val_fraction, min_doc_chars)


def _count_sources(cfg: Config, sources: list[SourceConfig], workers: int) -> dict[str, SourceCount]:
    """Count every source's splits, its inputs spread over `workers` processes; every input error surfaces here."""
    base = Path(cfg.base_dir)
    jobs = [(s, cfg.base_dir, item, cfg.data.val_fraction, cfg.data.min_doc_chars)
            for s in sources for item in source_inputs(s, base)]
    if workers <= 1 or len(jobs) <= 1:
        results = [_count_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            results = list(pool.map(_count_one, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    per_source: dict[str, list[InputCount]] = {s.name: [] for s in sources}
    for (s, *_), result in zip(jobs, results, strict=True):
        per_source[s.name].append(result)
    return {s.name: merge_counts(s, per_source[s.name], cfg.data.min_doc_chars) for s in sources}


# ---- encoding pass -------------------------------------------------------------------------------------------------

class _Ahead:
    """Iterate `items` in a thread, at most `depth` items ahead of the consumer (reading and splitting documents
    then overlaps encoding, which releases the GIL). The thread's errors are raised in the consumer."""

    _END = object()

    def __init__(self, items: Iterator, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put((True, item)):
                    return
            self._put((True, self._END))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put((False, err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator:
        while True:
            ok, item = self._queue.get()
            if not ok:
                raise item
            if item is self._END:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _chunks(docs: Iterator[tuple[str, str, int]], skip: dict[str, int],
            chunk_chars: int) -> Iterator[tuple[str, list[str], list[int]]]:
    """(split, documents, their UTF-8 bytes) of about `chunk_chars` characters, each of one split, in order; the
    first `skip[split]` documents of each split (written before a stop) left out."""
    buffers: dict[str, tuple[list[str], list[int]]] = {split: ([], []) for split in SPLITS}
    chars = dict.fromkeys(SPLITS, 0)
    seen = dict.fromkeys(SPLITS, 0)
    for split, text, n_bytes in docs:
        seen[split] += 1
        if seen[split] <= skip[split]:
            continue
        texts, sizes = buffers[split]
        texts.append(text)
        sizes.append(n_bytes)
        chars[split] += len(text)
        if chars[split] >= chunk_chars:
            yield split, texts, sizes
            buffers[split], chars[split] = ([], []), 0
    for split in SPLITS:
        if buffers[split][0]:
            yield split, *buffers[split]


@dataclass
class _Encoded:
    bytes: int = 0
    encode_s: float = 0.0
    tokenizer_s: float = 0.0
    stream_s: float = 0.0


def _write_source(cfg: Config, source: SourceConfig, count: SourceCount, fingerprint: str, global_tok,
                  global_sha: str, out_dir: Path, log, on_progress, resume: bool) -> _Encoded:
    tok_cfg = cfg.data.tokenizer.per_source
    vocab = source.vocab_size or tok_cfg.vocab_size
    identity = {"fingerprint": fingerprint, "shard_tokens": cfg.data.shard_tokens, "global_tokenizer": global_sha}
    partial = PartialSource(out_dir, identity)
    encoded = _Encoded()
    t_start = time.perf_counter()
    state = partial.resume(fingerprint) if resume else partial.start_fresh()  # --force: every source afresh
    if state == "published":
        log(f"  {source.name}: finished by a prepare that was stopped: now in place")
        return encoded
    if state == "resumed":
        own_tok = load_tokenizer(partial.tokenizer_path())
        done = {split: partial.splits[split] for split in SPLITS}
        log(f"  {source.name}: resuming a stopped prepare after {len(done['train'].shards)} train and "
            f"{len(done['val'].shards)} val shard(s) ({done['train'].documents + done['val'].documents} documents)")
    else:
        split = "train" if count.train.documents else "val"
        sample = list(capped(sample_documents(source, Path(cfg.base_dir), cfg.data.val_fraction,
                                              cfg.data.min_doc_chars, count, split, tok_cfg.sample_chars),
                             tok_cfg.sample_chars))
        log(f"  {source.name}: training its {tok_cfg.kind.value} tokenizer ({vocab} tokens) on "
            f"{_megabytes(sample)}")  # minutes on real data: say what is happening
        own_tok = train_tokenizer(sample, tok_cfg.kind, vocab)
        del sample
        partial.save_tokenizer(own_tok.to_str(pretty=True))
    t_stream = time.perf_counter()
    encoded.tokenizer_s = t_stream - t_start
    toks = {GLOBAL: global_tok, OWN: own_tok}
    dtypes = {v: token_dtype(t) for v, t in toks.items()}
    seen = seen_ids(partial, global_tok.get_vocab_size(), dtypes[GLOBAL])
    writers = {split: SplitWriter(partial, split, dtypes, cfg.data.shard_tokens, seen if split == "train" else None)
               for split in SPLITS}
    skip = {split: partial.splits[split].documents for split in SPLITS}
    on_progress(2 * sum(partial.splits[split].bytes for split in SPLITS))
    docs = source_documents(source, Path(cfg.base_dir), cfg.data.val_fraction, cfg.data.min_doc_chars, count)
    ahead = _Ahead(_chunks(docs, skip, cfg.data.chunk_chars))
    try:
        for split, texts, sizes in ahead:
            packed = {}
            for vocab, tok in toks.items():
                t0 = time.perf_counter()
                encodings = encode_batch(tok, texts)
                encoded.encode_s += time.perf_counter() - t0
                packed[vocab] = pack_encodings(encodings, dtypes[vocab])  # (packing in a thread was slower)
            writers[split].add(packed, sizes)
            encoded.bytes += 2 * sum(sizes)
            on_progress(2 * sum(sizes))
        for split in SPLITS:
            writers[split].finish()
    finally:
        ahead.close()
        for w in writers.values():
            w.discard()
    for split in SPLITS:
        got, want = partial.splits[split].documents, getattr(count, split).documents
        if got != want:
            raise DataError(f"source '{source.name}': {want} {split} documents counted but {got} read: its files "
                            f"changed while being prepared; run `dept prepare` again")
    meta = _meta(source, count, fingerprint, partial, toks, dtypes, seen)
    partial.publish(meta)
    encoded.stream_s = time.perf_counter() - t_stream
    tr = meta["splits"]["train"]
    log(f"  {source.name}: {tr['documents']} train / {meta['splits']['val']['documents']} val documents, "
        f"{tr['bytes'] / 1e6:.2f} MB, {tr['tokens'][GLOBAL]} global / {tr['tokens'][OWN]} own tokens "
        f"(own vocabulary {meta['vocab_size'][OWN]})")
    return encoded


def _meta(source: SourceConfig, count: SourceCount, fingerprint: str, partial: PartialSource, toks: dict,
          dtypes: dict, seen: np.ndarray) -> dict:
    trim = trim_vocab(seen)
    save_npy(partial.root / "trim_vocab.npy", trim)
    meta: dict = {"name": source.name, "unseen": source.unseen, "language": source.language,
                  "domain": source.domain, "fingerprint": fingerprint,
                  "dtype": {v: dtypes[v].name for v in VOCABS},
                  "vocab_size": {v: toks[v].get_vocab_size() for v in VOCABS},
                  "trim_vocab_size": int(trim.size), "splits": {}}
    for split in SPLITS:
        c, shards = getattr(count, split), partial.splits[split].shards
        meta["splits"][split] = {
            "documents": c.documents, "bytes": c.bytes, "chars": c.chars,
            "tokens": {v: sum(int(s["tokens"][v]) for s in shards) for v in VOCABS},
            "shards": [{"documents": s["documents"], "tokens": s["tokens"], "files": s["files"]} for s in shards]}
    files = partial.shard_digests() | checksums(partial.root, ["tokenizer.json", "trim_vocab.npy"])
    meta["files"] = dict(sorted(files.items()))
    return meta


# ---- the command ---------------------------------------------------------------------------------------------------

def global_tokenizer_seed(cfg: Config) -> int:
    seed = cfg.data.tokenizer.global_.seed
    return cfg.run.seed if seed is None else seed


def fingerprints(cfg: Config) -> tuple[str, dict[str, str]]:
    """Hashes of what shapes the prepared data: the global tokenizer's, and each source's (which includes it)."""
    base = Path(cfg.base_dir)
    split_settings = {"val_fraction": cfg.data.val_fraction, "min_doc_chars": cfg.data.min_doc_chars}
    resolved = {src["name"]: src for src in cfg.to_resolved_dict()["data"]["sources"]}
    signatures = {s.name: _hash([resolved[s.name], input_signature(s, base), split_settings])
                  for s in cfg.data.sources}
    given = cfg.data.tokenizer.global_.path
    if given:  # a shared tokenizer: its content is what matters, not which sources this site holds
        path = cfg.resolve(given)
        if not path.is_file():
            raise DataError(f"data.tokenizer.global.path: no file {path}")
        global_fp = _hash(["given", hashlib.sha256(path.read_bytes()).hexdigest()])
    else:
        global_fp = _hash([cfg.data.tokenizer.global_.model_dump(mode="json", exclude={"seed"}),
                           [signatures[s.name] for s in cfg.trained_sources], global_tokenizer_seed(cfg)])
    per_source = cfg.data.tokenizer.per_source.model_dump(mode="json")
    return global_fp, {s.name: _hash([signatures[s.name], per_source, global_fp]) for s in cfg.data.sources}


def load_given_tokenizer(path: Path):
    """A tokenizer file given in the config, checked: it must load, and id 0 must be the end of document."""
    try:
        tok = load_tokenizer(path)
    except Exception as err:  # tokenizers raises a bare Exception for a malformed file
        raise DataError(f"data.tokenizer.global.path: {path} is not a tokenizer.json ({err})") from None
    if tok.token_to_id(EOS) != EOS_ID:
        raise DataError(f"data.tokenizer.global.path: {path} has no end-of-document token {EOS} at id {EOS_ID}")
    return tok


def check_prepared(cfg: Config) -> None:
    """Refuse prepared data that no longer matches the config or its input files."""
    manifest = cfg.data_dir / "manifest.json"
    if not manifest.is_file():
        raise DataError(f"no prepared data in {cfg.data_dir}: run `dept prepare CONFIG` first")
    _, source_fps = fingerprints(cfg)
    data = json_or_none(manifest)
    if data is None:
        raise DataError(f"{manifest}: damaged: run `dept prepare` again")
    prepared = data.get("source_fingerprints", {})
    for name, fp in source_fps.items():
        if prepared.get(name) != fp:
            raise DataError(f"prepared data in {cfg.data_dir} does not match source '{name}' (its files or "
                            f"settings changed): run `dept prepare` again")


def _train_global(cfg: Config, counts: dict[str, SourceCount], log):
    global_cfg = cfg.data.tokenizer.global_
    trained = cfg.trained_sources

    def reader(source: SourceConfig):  # read when the mixture comes to it: one source's sample in memory at a time
        return lambda: sample_documents(source, Path(cfg.base_dir), cfg.data.val_fraction, cfg.data.min_doc_chars,
                                        counts[source.name], "train", global_cfg.sample_chars)

    mixture = list(balanced_mixture([reader(s) for s in trained], global_cfg.sample_chars, global_cfg.temperature,
                                    global_tokenizer_seed(cfg), [counts[s.name].train.chars for s in trained]))
    log(f"training the global {global_cfg.kind.value} tokenizer ({global_cfg.vocab_size} tokens, "
        f"temperature {global_cfg.temperature}) on {_megabytes(mixture)}")
    return train_tokenizer(mixture, global_cfg.kind, global_cfg.vocab_size)


def prepare(cfg: Config, log=print, force: bool = False, show_progress: bool = False) -> PrepareReport:
    t_start = time.perf_counter()
    out = cfg.data_dir
    workers = cfg.data.workers or os.cpu_count() or 1
    trained = cfg.trained_sources
    global_cfg = cfg.data.tokenizer.global_
    global_fp, source_fps = fingerprints(cfg)
    given = load_given_tokenizer(cfg.resolve(global_cfg.path)) if global_cfg.path else None  # checked up front
    global_path = out / GLOBAL_TOKENIZER

    def global_ready() -> bool:
        """The global tokenizer on disk is this config's: per the manifest, or per a stopped prepare's record."""
        manifest = json_or_none(out / "manifest.json") or {}
        if manifest.get("global_fingerprint") == global_fp and global_path.is_file() and not damaged(
                out, {k: v for k, v in manifest.get("files", {}).items() if k == GLOBAL_TOKENIZER}):
            return True
        record = json_or_none(out / PROGRESS) or {}
        digest = record.get("files", {}).get(GLOBAL_TOKENIZER)
        return record.get("global_fingerprint") == global_fp and digest is not None and \
            not damaged(out, {GLOBAL_TOKENIZER: digest})

    def up_to_date(name: str) -> bool:
        """Prepared with these settings, and every file as written (a damaged source is prepared again)."""
        meta = json_or_none(out / "sources" / name / "meta.json")
        return (not force and meta is not None and meta.get("fingerprint") == source_fps[name]
                and not damaged(out / "sources" / name, meta.get("files", {})))

    redo_global = force or not global_ready()
    todo = [s for s in cfg.data.sources if redo_global or not up_to_date(s.name)]
    to_read = trained if redo_global and not global_cfg.path else todo
    to_read = list({s.name: s for s in to_read + todo}.values())
    log(f"reading {len(to_read)} source(s) with {min(workers, max(1, len(to_read)))} process(es)")
    t0 = time.perf_counter()
    counts = _count_sources(cfg, to_read, workers)  # every input error surfaces here, before anything is written
    count_s = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out, "dept prepare", log).acquire()  # one writer of the data folder at a time
    try:
        for path in remove_leftovers(out):
            log(f"removed {path.relative_to(out)}, left by a write that was stopped")
        t0 = time.perf_counter()
        if redo_global:
            if given is not None:
                log(f"using the global tokenizer {global_cfg.path} ({given.get_vocab_size()} tokens)")
                write_text_atomic(global_path, given.to_str())
            else:
                write_text_atomic(global_path, _train_global(cfg, counts, log).to_str())
            # A prepare stopped after this point keeps this tokenizer when run again.
            write_json_atomic(out / PROGRESS, {"global_fingerprint": global_fp,
                                               "files": checksums(out, [GLOBAL_TOKENIZER])})
        global_tok = load_tokenizer(global_path)
        global_sha = sha256_file(global_path)
        tokenizer_s = time.perf_counter() - t0

        encoded_bytes, encode_s, stream_s = 0, 0.0, 0.0
        total = 2 * sum(counts[s.name].train.bytes + counts[s.name].val.bytes for s in todo)
        with Progress(TextColumn("encoding"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), transient=True, disable=not show_progress) as progress:
            task = progress.add_task("encode", total=total)
            for s in todo:
                done = _write_source(cfg, s, counts[s.name], source_fps[s.name], global_tok, global_sha,
                                     out / "sources" / s.name, log, lambda n: progress.advance(task, n),
                                     resume=not force)
                encoded_bytes += done.bytes
                encode_s += done.encode_s
                tokenizer_s += done.tokenizer_s
                stream_s += done.stream_s
        skipped = [s.name for s in cfg.data.sources if s not in todo]
        for name in skipped:
            log(f"  {name}: unchanged, skipped")
        manifest = {"sources": [s.name for s in cfg.data.sources], "global_fingerprint": global_fp,
                    "global_vocab_size": global_tok.get_vocab_size(),
                    "source_fingerprints": source_fps,
                    "files": checksums(out, [GLOBAL_TOKENIZER, *(f"sources/{s.name}/meta.json"
                                                                 for s in cfg.data.sources)])}
        write_json_atomic(out / "manifest.json", manifest)
        _remove_partials(out, log)
        (out / PROGRESS).unlink(missing_ok=True)
        return PrepareReport([s.name for s in todo], skipped, encoded_bytes, encode_s, time.perf_counter() - t_start,
                             count_s, tokenizer_s, stream_s)
    finally:
        lock.release()


def _remove_partials(out: Path, log) -> None:
    """Every source is whole now: a partial folder left is of other settings (a prepare stopped, then changed)."""
    import shutil

    root = out / PARTIAL
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        shutil.rmtree(path, ignore_errors=True)
        log(f"removed {path.relative_to(out)}, a stopped prepare's part of a source with other settings")
    shutil.rmtree(root, ignore_errors=True)
