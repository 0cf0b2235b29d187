"""Read a source's documents from its files, one at a time, and split them into train/validation by document hash.

Formats: .txt/.md (one document per file, or split on `delimiter`) and .jsonl (one JSON object per line, text in
`text_field`), each plain, gzip-compressed (.gz) or zstd-compressed (.zst/.zstd, needs `zstandard`); .parquet
(column `text_field`, read one record batch at a time, needs pyarrow) and a Hugging Face `datasets` dataset saved on
disk. Every failure names the file (and line) and what is wrong.

Nothing here holds more than one document and a read buffer in memory, except `read_source`, which collects a
(small) source whole for the callers that want lists (adaptation). `dept prepare` makes passes over
`split_documents` instead (see `dept.data.prepare`).
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dept.config import SourceConfig
from dept.errors import DataError

TEXT_SUFFIXES = {".txt", ".md"}
SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".parquet"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_BLOCK = 1 << 22  # bytes read at a time from a text file
_BATCH_ROWS = 4096  # parquet / datasets rows converted to Python at a time


@dataclass
class SplitDocuments:
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)


def file_kind(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression) of a file: ('.jsonl', 'gzip') for `a.jsonl.gz`, ('.txt', None) for `a.txt`."""
    suffix = path.suffix.lower()
    if suffix in COMPRESSIONS:
        return Path(path.stem).suffix.lower(), COMPRESSIONS[suffix]
    return suffix, None


def _supported(path: Path) -> bool:
    kind, compression = file_kind(path)
    return kind in SUFFIXES and (compression is None or kind != ".parquet")


def resolve_files(source: SourceConfig, base_dir: Path) -> list[Path]:
    """Expand the source's globs (relative to `base_dir`), sorted, deduplicated; every glob must match."""
    found: list[Path] = []
    seen: set[Path] = set()
    for pattern in source.files:
        full = Path(pattern).expanduser()
        full = full if full.is_absolute() else base_dir / full
        matches = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
        if not matches:
            raise DataError(f"source '{source.name}': no file matches '{pattern}'")
        for m in matches:
            if not _supported(m):
                kind, compression = file_kind(m)
                shown = kind + m.suffix if compression else m.suffix
                raise DataError(f"source '{source.name}': {m}: unsupported file type '{shown}' "
                                f"(use {', '.join(sorted(SUFFIXES))}; .jsonl/.txt/.md may end in .gz or .zst)")
            if m not in seen:
                seen.add(m)
                found.append(m)
    return found


# ---- opening (de)compressed files ----------------------------------------------------------------------------------

class _ZstdReader(io.RawIOBase):
    """A zstd file's decompressed bytes, frame after frame; a file cut inside a frame is refused (the zstandard
    package's own stream reader would end there silently)."""

    def __init__(self, raw: BinaryIO, path: Path):
        import zstandard

        self._raw, self._path, self._error = raw, path, zstandard.ZstdError
        self._dctx = zstandard.ZstdDecompressor()
        self._frame, self._fed = self._dctx.decompressobj(), False
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            block = self._raw.read(1 << 20)
            if not block:
                if self._fed and not self._frame.eof:
                    raise DataError(f"{self._path}: not a readable zstd file (it ends inside a frame: cut short?)")
                return 0
            self._pending = self._decompress(block)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _decompress(self, block: bytes) -> bytes:
        out = []
        try:
            while block:
                out.append(self._frame.decompress(block))
                self._fed = True
                block = b""
                if self._frame.eof:  # a new frame may follow (concatenated or multi-threaded zstd output)
                    block = self._frame.unused_data
                    self._frame, self._fed = self._dctx.decompressobj(), False
        except self._error as err:
            raise DataError(f"{self._path}: not a readable zstd file ({err})") from None
        return b"".join(out)


@contextmanager
def _open_binary(path: Path, compression: str | None) -> Iterator[BinaryIO]:
    """The file's (decompressed) bytes as a buffered binary stream."""
    if compression is None:
        with open(path, "rb") as f:
            yield f
        return
    if path.stat().st_size == 0:  # gzip and zstd streams start with a header: an empty file is none
        raise DataError(f"{path}: not a readable {compression} file (it is empty)")
    if compression == "gzip":
        with gzip.open(path, "rb") as f:
            yield f
        return
    try:
        import zstandard  # noqa: F401
    except ImportError:
        raise DataError(f"{path}: reading .zst needs the zstandard package (pip install 'dept[zstd]')") from None
    with open(path, "rb") as raw:
        yield io.BufferedReader(_ZstdReader(raw, path), 1 << 20)


def _guarded(items: Iterator, path: Path, compression: str | None) -> Iterator:
    """`items`, with a damaged gzip stream (found while reading it) reported as a DataError naming the file."""
    if compression != "gzip":
        yield from items
        return
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{path}: not a readable gzip file ({err})") from None
        yield item


# ---- formats -------------------------------------------------------------------------------------------------------

def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: not valid UTF-8 at byte {err.start}") from None


def _read_text(f: BinaryIO, where: str, delimiter: str | None) -> Iterator[str]:
    """A text file's documents, read in blocks: the whole text, or its pieces between delimiters (CRLF/CR read as
    \\n first, so "\\n\\n" delimiters split Windows files; a leading byte order mark dropped)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, first, carry_cr = 0, True, False
    tail = ""  # text after the last delimiter (or all of it, with no delimiter)
    whole: list[str] = []
    while True:
        # A long document grows the block with it, so each of its bytes is copied a bounded number of times.
        block = f.read(max(_BLOCK, len(tail)))
        final = not block
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(block, final)
        except UnicodeDecodeError as err:
            raise DataError(f"{where}: not valid UTF-8 at byte {offset - pending + err.start}") from None
        offset += len(block)
        if first and text:
            first = False
            if text.startswith("\ufeff"):
                text = text[1:]
        if carry_cr:
            text, carry_cr = "\r" + text, False
        if not final and text.endswith("\r"):  # a CRLF may straddle two blocks
            text, carry_cr = text[:-1], True
        if "\r" in text:  # Windows (CRLF) or old Mac (CR) line ends
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if delimiter is None:
            whole.append(text)
        else:
            parts = (tail + text).split(delimiter)
            tail = parts.pop()
            yield from parts
        if final:
            break
    yield "".join(whole) if delimiter is None else tail


def _read_jsonl(f: BinaryIO, path: Path, text_field: str) -> Iterator[str]:
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
        text = obj[text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field '{text_field}' is not a string")
        if b"\\u" in raw and b"\\ud" in raw.lower():  # JSON may escape a lone surrogate ("\ud800"): no text
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                code = ord(err.object[err.start])
                raise DataError(f"{where}: field '{text_field}' holds a lone surrogate (\\u{code:04x}), not text") \
                    from None
        yield text


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install 'dept[parquet]')") from None

    def unreadable(err: Exception) -> DataError:
        return DataError(f"{path}: not a readable .parquet file ({(str(err).splitlines() or [''])[0]})")

    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except (pa.ArrowException, OSError) as err:  # empty, truncated or not parquet at all
        raise unreadable(err) from None
    if text_field not in names:
        raise DataError(f"{path}: no column '{text_field}' (columns: {', '.join(names)})")
    row = 0
    batches = pf.iter_batches(batch_size=_BATCH_ROWS, columns=[text_field])
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as err:  # a damaged row group, found when it is read
            raise unreadable(err) from None
        if batch is None:
            return
        for value in batch.column(0).to_pylist():
            if not isinstance(value, str):
                raise DataError(f"{path}: row {row}: column '{text_field}' is not a string")
            row += 1
            yield value


def _hf_path(source: SourceConfig, base_dir: Path) -> Path:
    path = Path(source.hf_dataset).expanduser()
    return path if path.is_absolute() else base_dir / path


def _read_hf_dataset(source: SourceConfig, base_dir: Path) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"source '{source.name}': hf_dataset needs `datasets` (pip install 'dept[datasets]')") from None
    path = _hf_path(source, base_dir)
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
    ds = ds.select_columns([source.text_field])
    for start in range(0, len(ds), _BATCH_ROWS):  # memory-mapped Arrow, converted a batch at a time
        for i, value in enumerate(ds[start:start + _BATCH_ROWS][source.text_field], start):
            if not isinstance(value, str):
                raise DataError(f"source '{source.name}': {path}: row {i}: '{source.text_field}' is not a string")
            yield value


# ---- a source as a sequence of inputs ------------------------------------------------------------------------------

HF_INPUT = "hf_dataset"  # the input that stands for a source's `hf_dataset` (files are Paths)


def source_inputs(source: SourceConfig, base_dir: Path) -> list[Path | str]:
    """What a source reads, in order: its files, then its `hf_dataset`. One pass over a source reads these in turn,
    so passes over separate inputs (one process each) add up to a pass over the source."""
    inputs: list[Path | str] = list(resolve_files(source, base_dir))
    return inputs + [HF_INPUT] if source.hf_dataset else inputs


def iter_input(source: SourceConfig, base_dir: Path, item: Path | str) -> Iterator[str]:
    if item == HF_INPUT:
        yield from _read_hf_dataset(source, base_dir)
        return
    path = Path(item)
    kind, compression = file_kind(path)
    if kind == ".parquet":
        yield from _read_parquet(path, source.text_field)
        return
    with _open_binary(path, compression) as f:
        if kind in TEXT_SUFFIXES:
            yield from _guarded(_read_text(f, str(path), source.delimiter), path, compression)
        else:
            yield from _guarded(_read_jsonl(f, path, source.text_field), path, compression)


def iter_documents(source: SourceConfig, base_dir: Path) -> Iterator[str]:
    for item in source_inputs(source, base_dir):
        yield from iter_input(source, base_dir, item)


# ---- the split -----------------------------------------------------------------------------------------------------

def _validation_hash(data: bytes, val_fraction: float) -> bool:
    return int.from_bytes(hashlib.sha1(data).digest()[:8], "big") / 2**64 < val_fraction


def is_validation(text: str, val_fraction: float) -> bool:
    """Deterministic split: the document's SHA-1 read as a number in [0, 1) falls below `val_fraction`."""
    return _validation_hash(text.encode("utf-8"), val_fraction)


def split_documents(texts: Iterator[str], val_fraction: float, min_doc_chars: int) -> Iterator[tuple[bool, str, int]]:
    """(is validation, text, UTF-8 bytes) of each document kept: edge newlines stripped (a blank one is empty),
    shorter than `min_doc_chars` dropped."""
    for text in texts:
        text = text.strip("\n") if text and not text.isspace() else ""
        if len(text) < min_doc_chars:
            continue
        data = text.encode("utf-8")
        yield _validation_hash(data, val_fraction), text, len(data)


@dataclass
class SplitCount:
    documents: int = 0
    chars: int = 0
    bytes: int = 0

    def add(self, chars: int, n_bytes: int, documents: int = 1) -> None:
        self.documents += documents
        self.chars += chars
        self.bytes += n_bytes


@dataclass
class InputCount:
    """One pass over one input: its documents per split, and the size of its last train document."""
    train: SplitCount = field(default_factory=SplitCount)
    val: SplitCount = field(default_factory=SplitCount)
    last_train: tuple[int, int] | None = None  # (chars, bytes)


def count_input(source: SourceConfig, base_dir: Path, item: Path | str, val_fraction: float,
                min_doc_chars: int) -> InputCount:
    count = InputCount()
    for is_val, text, n_bytes in split_documents(iter_input(source, base_dir, item), val_fraction, min_doc_chars):
        if is_val:
            count.val.add(len(text), n_bytes)
        else:
            count.train.add(len(text), n_bytes)
            count.last_train = (len(text), n_bytes)
    return count


@dataclass
class SourceCount:
    """What a counting pass over a whole source gives: the documents of each split and where they are.

    `held_out`: no document hashed into validation, so the last train document is the validation split (a tiny
    source may hash every document into train); `raw_train` counts train documents before that."""
    name: str
    train: SplitCount
    val: SplitCount
    held_out: bool
    raw_train: int


def merge_counts(source: SourceConfig, counts: list[InputCount], min_doc_chars: int) -> SourceCount:
    """A source's counts from its inputs' (in order), with `read_source`'s rules and errors."""
    train, val, last = SplitCount(), SplitCount(), None
    for c in counts:
        train.add(c.train.chars, c.train.bytes, c.train.documents)
        val.add(c.val.chars, c.val.bytes, c.val.documents)
        last = c.last_train or last
    raw_train = train.documents
    if not train.documents and not val.documents:
        raise DataError(f"source '{source.name}': no documents (files are empty or all shorter than "
                        f"data.min_doc_chars={min_doc_chars})")
    held_out = not val.documents
    if held_out:
        # A tiny source may hash every document into train: hold out its last document instead.
        train.add(-last[0], -last[1], -1)
        val.add(last[0], last[1])
    if not train.documents and not source.unseen:
        hint = ""
        if val.documents == 1 and any(file_kind(Path(f))[0] in TEXT_SUFFIXES for f in source.files):
            hint = (f" (its text files gave one document: delimiter {source.delimiter!r} never occurs in them)"
                    if source.delimiter else " (a .txt/.md file is one document: set `delimiter` to split it)")
        raise DataError(f"source '{source.name}': only {val.documents} document(s), none left for training{hint}")
    return SourceCount(source.name, train, val, held_out, raw_train)


def source_documents(source: SourceConfig, base_dir: Path, val_fraction: float, min_doc_chars: int,
                     count: SourceCount) -> Iterator[tuple[str, str, int]]:
    """(split, text, UTF-8 bytes) of every document of a counted source, in order; the held-out one (if any) is
    "val"."""
    n_train = 0
    for is_val, text, n_bytes in split_documents(iter_documents(source, base_dir), val_fraction, min_doc_chars):
        if is_val:
            yield "val", text, n_bytes
            continue
        n_train += 1
        yield ("val" if count.held_out and n_train == count.raw_train else "train"), text, n_bytes


def sample_documents(source: SourceConfig, base_dir: Path, val_fraction: float, min_doc_chars: int,
                     count: SourceCount, split: str, max_chars: int) -> list[str]:
    """The leading documents of a split whose characters reach `max_chars` (all of them in a smaller split): what
    a tokenizer trains on. Reading stops there."""
    docs: list[str] = []
    chars, total = 0, getattr(count, split).documents
    if total == 0:
        return docs
    for which, text, _ in source_documents(source, base_dir, val_fraction, min_doc_chars, count):
        if which != split:
            continue
        docs.append(text)
        chars += len(text)
        if chars >= max_chars or len(docs) == total:
            break
    return docs


def read_source(source: SourceConfig, base_dir: Path, val_fraction: float, min_doc_chars: int) -> SplitDocuments:
    """A source's documents, whole, in memory (for small sources: adaptation, tests)."""
    docs, counts = SplitDocuments(), InputCount()
    for is_val, text, n_bytes in split_documents(iter_documents(source, base_dir), val_fraction, min_doc_chars):
        (docs.val if is_val else docs.train).append(text)
        (counts.val if is_val else counts.train).add(len(text), n_bytes)
        counts.last_train = counts.last_train if is_val else (len(text), n_bytes)
    count = merge_counts(source, [counts], min_doc_chars)
    if count.held_out:
        docs.val.append(docs.train.pop())
    return docs


def input_signature(source: SourceConfig, base_dir: Path) -> list[list[object]]:
    """Paths, sizes and modification times of the source's inputs: changes when the inputs do."""
    sig: list[list[object]] = []
    paths = resolve_files(source, base_dir)
    if source.hf_dataset:
        root = _hf_path(source, base_dir)
        paths += sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else [root]
    for p in paths:
        st = p.stat() if p.exists() else None
        sig.append([str(p.resolve()), st.st_size if st else -1, st.st_mtime_ns if st else -1])
    return sig
