"""`dept prepare`: read sources, split, train tokenizers, encode packed shards; skip what has not changed.

Reading runs in a process pool (one source per process); tokenizer training and `encode_batch` run on all
cores inside HF `tokenizers`. A source is redone only when its inputs (paths, sizes, mtimes), its settings or the
global tokenizer change. Each source folder is written to a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from dept.atomic_io import publish_dir, remove_leftovers, write_json_atomic, write_text_atomic
from dept.config import Config, SourceConfig
from dept.data.documents import SplitDocuments, input_signature, read_source
from dept.data.integrity import checksums, damaged
from dept.data.prepared import GLOBAL, GLOBAL_TOKENIZER, OWN
from dept.data.tokenizer import (
    EOS,
    EOS_ID,
    balanced_mixture,
    capped,
    encode_stream,
    load_tokenizer,
    train_tokenizer,
)
from dept.errors import DataError
from dept.folder_lock import FolderLock


@dataclass
class PrepareReport:
    prepared: list[str]
    skipped: list[str]
    encoded_bytes: int
    encode_s: float
    total_s: float

    @property
    def encode_mb_per_s(self) -> float:
        return self.encoded_bytes / 1e6 / self.encode_s if self.encode_s > 0 else 0.0


def _hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _megabytes(texts: list[str]) -> str:
    return f"{sum(len(t.encode('utf-8')) for t in texts) / 1e6:.2f} MB"


def _read_one(args: tuple[SourceConfig, str, float, int]) -> SplitDocuments:
    source, base_dir, val_fraction, min_doc_chars = args
    return read_source(source, Path(base_dir), val_fraction, min_doc_chars)


def _read_sources(cfg: Config, sources: list[SourceConfig], workers: int) -> dict[str, SplitDocuments]:
    args = [(s, cfg.base_dir, cfg.data.val_fraction, cfg.data.min_doc_chars) for s in sources]
    if workers <= 1 or len(sources) <= 1:
        return {s.name: _read_one(a) for s, a in zip(sources, args, strict=True)}
    with ProcessPoolExecutor(max_workers=min(workers, len(sources))) as pool:
        return {s.name: docs for s, docs in zip(sources, pool.map(_read_one, args), strict=True)}


def _write_source(cfg: Config, source: SourceConfig, docs: SplitDocuments, fingerprint: str,
                  global_tok_path: Path, out_dir: Path, log, on_progress=None) -> tuple[int, float]:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        return _write_source_into(cfg, source, docs, fingerprint, global_tok_path, tmp, out_dir, log, on_progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_source_into(cfg: Config, source: SourceConfig, docs: SplitDocuments, fingerprint: str,
                       global_tok_path: Path, tmp: Path, out_dir: Path, log, on_progress) -> tuple[int, float]:
    tok_cfg = cfg.data.tokenizer.per_source
    vocab = source.vocab_size or tok_cfg.vocab_size
    (tmp / GLOBAL).mkdir(parents=True)
    (tmp / OWN).mkdir(parents=True)
    sample = list(capped(docs.train or docs.val, tok_cfg.sample_chars))
    log(f"  {source.name}: training its {tok_cfg.kind.value} tokenizer ({vocab} tokens) on "
        f"{_megabytes(sample)}")  # minutes on real data: say what is happening
    own_tok = train_tokenizer(sample, tok_cfg.kind, vocab)
    own_tok.save(str(tmp / "tokenizer.json"))
    global_tok = load_tokenizer(global_tok_path)
    meta: dict = {"name": source.name, "unseen": source.unseen, "language": source.language,
                  "domain": source.domain, "fingerprint": fingerprint, "dtype": {}, "vocab_size": {},
                  "splits": {}}
    encoded_bytes, encode_s = 0, 0.0
    for split, split_docs in (("train", docs.train), ("val", docs.val)):
        n_bytes = sum(len(d.encode("utf-8")) for d in split_docs)
        info = {"documents": len(split_docs), "bytes": n_bytes, "chars": sum(len(d) for d in split_docs),
                "tokens": {}}
        for name, tok in ((GLOBAL, global_tok), (OWN, own_tok)):
            t0 = time.perf_counter()
            ids = encode_stream(tok, split_docs, on_progress=on_progress)
            encode_s += time.perf_counter() - t0
            encoded_bytes += n_bytes
            ids.tofile(tmp / name / f"{split}.bin")
            info["tokens"][name] = int(ids.size)
            meta["dtype"][name] = ids.dtype.name
            meta["vocab_size"][name] = tok.get_vocab_size()
            if name == GLOBAL and split == "train":
                trim = np.union1d(np.unique(ids).astype(np.int64), np.array([EOS_ID]))
                np.save(tmp / "trim_vocab.npy", trim)
                meta["trim_vocab_size"] = int(trim.size)
        meta["splits"][split] = info
    meta["files"] = checksums(tmp, sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()))
    write_json_atomic(tmp / "meta.json", meta)
    publish_dir(tmp, out_dir)
    tr = meta["splits"]["train"]
    log(f"  {source.name}: {tr['documents']} train / {meta['splits']['val']['documents']} val documents, "
        f"{tr['bytes'] / 1e6:.2f} MB, {tr['tokens'][GLOBAL]} global / {tr['tokens'][OWN]} own tokens "
        f"(own vocabulary {meta['vocab_size'][OWN]})")
    return encoded_bytes, encode_s


def _json_or_none(path: Path) -> dict | None:
    """A JSON object from `path`; None where it is missing or damaged (what it described is prepared again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


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
    data = _json_or_none(manifest)
    if data is None:
        raise DataError(f"{manifest}: damaged: run `dept prepare` again")
    prepared = data.get("source_fingerprints", {})
    for name, fp in source_fps.items():
        if prepared.get(name) != fp:
            raise DataError(f"prepared data in {cfg.data_dir} does not match source '{name}' (its files or "
                            f"settings changed): run `dept prepare` again")


def prepare(cfg: Config, log=print, force: bool = False, show_progress: bool = False) -> PrepareReport:
    t_start = time.perf_counter()
    out = cfg.data_dir
    workers = cfg.data.workers or os.cpu_count() or 1
    trained = cfg.trained_sources
    global_cfg = cfg.data.tokenizer.global_
    global_fp, source_fps = fingerprints(cfg)
    given = load_given_tokenizer(cfg.resolve(global_cfg.path)) if global_cfg.path else None  # checked up front
    global_path = out / GLOBAL_TOKENIZER
    old_manifest = _json_or_none(out / "manifest.json") or {}

    def up_to_date(name: str) -> bool:
        """Prepared with these settings, and every file as written (a damaged source is prepared again)."""
        meta = _json_or_none(out / "sources" / name / "meta.json")
        return (not force and meta is not None and meta.get("fingerprint") == source_fps[name]
                and not damaged(out / "sources" / name, meta.get("files", {})))

    redo_global = force or old_manifest.get("global_fingerprint") != global_fp or not global_path.is_file() \
        or bool(damaged(out, {k: v for k, v in old_manifest.get("files", {}).items() if k == GLOBAL_TOKENIZER}))
    todo = [s for s in cfg.data.sources if redo_global or not up_to_date(s.name)]
    to_read = trained if redo_global and not global_cfg.path else todo
    to_read = list({s.name: s for s in to_read + todo}.values())
    log(f"reading {len(to_read)} source(s) with {min(workers, max(1, len(to_read)))} process(es)")
    docs = _read_sources(cfg, to_read, workers)  # every input error surfaces here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out, "dept prepare", log).acquire()  # one writer of the data folder at a time
    try:
        for path in remove_leftovers(out):
            log(f"removed {path.relative_to(out)}, left by a write that was stopped")
        if redo_global and given is not None:
            log(f"using the global tokenizer {global_cfg.path} ({given.get_vocab_size()} tokens)")
            write_text_atomic(global_path, given.to_str())
        elif redo_global:
            mixture = list(balanced_mixture([docs[s.name].train for s in trained], global_cfg.sample_chars,
                                            global_cfg.temperature, global_tokenizer_seed(cfg)))
            log(f"training the global {global_cfg.kind.value} tokenizer ({global_cfg.vocab_size} tokens, "
                f"temperature {global_cfg.temperature}) on {_megabytes(mixture)}")
            tok = train_tokenizer(mixture, global_cfg.kind, global_cfg.vocab_size)
            write_text_atomic(global_path, tok.to_str())

        encoded_bytes, encode_s = 0, 0.0
        total = 2 * sum(len(d.encode("utf-8")) for s in todo for d in docs[s.name].train + docs[s.name].val)
        with Progress(TextColumn("encoding"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), transient=True, disable=not show_progress) as progress:
            task = progress.add_task("encode", total=total)
            for s in todo:
                b, t = _write_source(cfg, s, docs[s.name], source_fps[s.name], global_path, out / "sources" / s.name,
                                     log, lambda _docs, nbytes: progress.advance(task, nbytes))
                encoded_bytes += b
                encode_s += t
        skipped = [s.name for s in cfg.data.sources if s not in todo]
        for name in skipped:
            log(f"  {name}: unchanged, skipped")
        manifest = {"sources": [s.name for s in cfg.data.sources], "global_fingerprint": global_fp,
                    "global_vocab_size": load_tokenizer(global_path).get_vocab_size(),
                    "source_fingerprints": source_fps,
                    "files": checksums(out, [GLOBAL_TOKENIZER, *(f"sources/{s.name}/meta.json"
                                                                 for s in cfg.data.sources)])}
        write_json_atomic(out / "manifest.json", manifest)
        return PrepareReport([s.name for s in todo], skipped, encoded_bytes, encode_s, time.perf_counter() - t_start)
    finally:
        lock.release()
