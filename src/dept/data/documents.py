"""Read a source's documents from its files and split them into train/validation by document hash.

Formats: .txt/.md (one document per file, or split on `delimiter`), .jsonl (one JSON object per line, text in
`text_field`), .parquet (column `text_field`, needs pyarrow) and a Hugging Face `datasets` dataset saved on disk.
Every failure names the file (and line) and what is wrong.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dept.config import SourceConfig
from dept.errors import DataError

TEXT_SUFFIXES = {".txt", ".md"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".parquet"}


@dataclass
class SplitDocuments:
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)


def resolve_files(source: SourceConfig, base_dir: Path) -> list[Path]:
    """Expand the source's globs (relative to `base_dir`), sorted, deduplicated; every glob must match."""
    found: list[Path] = []
    for pattern in source.files:
        full = Path(pattern).expanduser()
        full = full if full.is_absolute() else base_dir / full
        matches = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"source '{source.name}': no file matches '{pattern}'")
        for m in matches:
            if m.suffix.lower() not in SUFFIXES:
                raise DataError(f"source '{source.name}': {m}: unsupported file type '{m.suffix}' "
                                f"(use {', '.join(sorted(SUFFIXES))})")
            if m not in found:
                found.append(m)
    return found


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: not valid UTF-8 at byte {err.start}") from None


def _read_text_file(path: Path, delimiter: str | None) -> Iterator[str]:
    text = _decode(path.read_bytes(), str(path))
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:  # Windows (CRLF) or old Mac (CR) line ends read as \n, so "\n\n" delimiters split them
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if delimiter is None:
        yield text
    else:
        yield from text.split(delimiter)


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                raw = raw[3:]
            try:
                obj = json.loads(_decode(raw, where))
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: invalid JSON ({err.msg})") from None
            if not isinstance(obj, dict) or text_field not in obj:
                raise DataError(f"{where}: no '{text_field}' field")
            if not isinstance(obj[text_field], str):
                raise DataError(f"{where}: field '{text_field}' is not a string")
            try:
                obj[text_field].encode("utf-8")
            except UnicodeEncodeError as err:  # JSON may escape a lone surrogate ("\ud800"): no text
                code = ord(err.object[err.start])
                raise DataError(f"{where}: field '{text_field}' holds a lone surrogate (\\u{code:04x}), not text") \
                    from None
            yield obj[text_field]


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install 'dept[parquet]')") from None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:  # empty, truncated or not parquet at all
        raise DataError(f"{path}: not a readable .parquet file ({str(err).splitlines()[0]})") from None
    if text_field not in table.column_names:
        raise DataError(f"{path}: no column '{text_field}' (columns: {', '.join(table.column_names)})")
    for i, value in enumerate(table.column(text_field).to_pylist()):
        if not isinstance(value, str):
            raise DataError(f"{path}: row {i}: column '{text_field}' is not a string")
        yield value


def _read_hf_dataset(source: SourceConfig, base_dir: Path) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"source '{source.name}': hf_dataset needs `datasets` (pip install 'dept[datasets]')") from None
    path = Path(source.hf_dataset).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.exists():
        raise DataError(f"source '{source.name}': hf_dataset folder not found: {path}")
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if source.hf_split not in ds:
            raise DataError(f"source '{source.name}': {path} has no split '{source.hf_split}' "
                            f"(splits: {', '.join(ds.keys())})")
        ds = ds[source.hf_split]
    if source.text_field not in ds.column_names:
        raise DataError(f"source '{source.name}': {path} has no column '{source.text_field}'")
    for i, value in enumerate(ds[source.text_field]):
        if not isinstance(value, str):
            raise DataError(f"source '{source.name}': {path}: row {i}: '{source.text_field}' is not a string")
        yield value


def iter_documents(source: SourceConfig, base_dir: Path) -> Iterator[str]:
    for path in resolve_files(source, base_dir):
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            yield from _read_text_file(path, source.delimiter)
        elif suffix == ".jsonl":
            yield from _read_jsonl(path, source.text_field)
        else:
            yield from _read_parquet(path, source.text_field)
    if source.hf_dataset:
        yield from _read_hf_dataset(source, base_dir)


def is_validation(text: str, val_fraction: float) -> bool:
    """Deterministic split: the document's SHA-1 read as a number in [0, 1) falls below `val_fraction`."""
    digest = hashlib.sha1(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def read_source(source: SourceConfig, base_dir: Path, val_fraction: float, min_doc_chars: int) -> SplitDocuments:
    docs = SplitDocuments()
    for text in iter_documents(source, base_dir):
        text = text.strip("\n") if text.strip() else ""
        if len(text) < min_doc_chars:
            continue
        (docs.val if is_validation(text, val_fraction) else docs.train).append(text)
    if not docs.train and not docs.val:
        raise DataError(f"source '{source.name}': no documents (files are empty or all shorter than "
                        f"data.min_doc_chars={min_doc_chars})")
    if not docs.val:
        # A tiny source may hash every document into train: hold out its last document instead.
        docs.val.append(docs.train.pop())
    if not docs.train and not source.unseen:
        hint = ""
        if len(docs.val) == 1 and any(Path(f).suffix.lower() in TEXT_SUFFIXES for f in source.files):
            hint = (f" (its text files gave one document: delimiter {source.delimiter!r} never occurs in them)"
                    if source.delimiter else " (a .txt/.md file is one document: set `delimiter` to split it)")
        raise DataError(f"source '{source.name}': only {len(docs.val)} document(s), none left for training{hint}")
    return docs


def input_signature(source: SourceConfig, base_dir: Path) -> list[list[object]]:
    """Paths, sizes and modification times of the source's inputs: changes when the inputs do."""
    sig: list[list[object]] = []
    paths = resolve_files(source, base_dir)
    if source.hf_dataset:
        root = Path(source.hf_dataset).expanduser()
        root = root if root.is_absolute() else base_dir / root
        paths += sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else [root]
    for p in paths:
        st = p.stat() if p.exists() else None
        sig.append([str(p.resolve()), st.st_size if st else -1, st.st_mtime_ns if st else -1])
    return sig
