"""A source's token shards, written as they are encoded into a folder that survives a stop and is resumed.

A source is written into `partial/NAME/` and renamed to `sources/NAME/` when whole. A split's token stream
(EOS, doc1, EOS, doc2, EOS, ...) is cut into shards of whole documents: a shard ends at the first document boundary
where its global-vocabulary tokens reach `data.shard_tokens` (and another document follows), and holds the same
documents in both vocabularies (`global/train.00000.bin`, `own/train.00000.bin`). A split of one shard is
`global/train.bin`. Where a shard ends depends on the documents alone, never on how they were batched for encoding.

`progress.json` records the shards complete so far: documents, tokens, file names and SHA-256 digests, with what
they were made from (the source's fingerprint, the shard size, both tokenizers' digests). A prepare stopped
anywhere and run again with the same settings verifies those shards, rereads the documents they hold without
encoding them, and continues with the next shard: it ends with the bytes a prepare never stopped writes. A partial
folder made with other settings is deleted, never resumed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dept.atomic_io import AtomicFile, publish_dir, write_atomic, write_json_atomic
from dept.data.integrity import damaged
from dept.data.prepared import GLOBAL, OWN
from dept.data.tokenizer import EOS_ID

PARTIAL = "partial"  # DATA_DIR/partial/NAME: a source being written (not a leftover: it is resumed)
PROGRESS = "progress.json"
FORMAT = 1
VOCABS = (GLOBAL, OWN)
SPLITS = ("train", "val")


def partial_dir(final: Path) -> Path:
    """DATA_DIR/partial/NAME for DATA_DIR/sources/NAME (apart: no source's name can be another's partial name)."""
    return final.parent.parent / PARTIAL / final.name


def shard_name(vocab: str, split: str, index: int, only: bool) -> str:
    return f"{vocab}/{split}.bin" if only else f"{vocab}/{split}.{index:05d}.bin"


def json_or_none(path: Path) -> dict | None:
    """A JSON object from `path`; None where it is missing or damaged (what it described is written again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


@dataclass
class SplitProgress:
    shards: list[dict] = field(default_factory=list)  # {"documents", "bytes", "tokens": {vocab: n}, "files": ...}
    complete: bool = False

    @property
    def documents(self) -> int:
        return sum(s["documents"] for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s["bytes"] for s in self.shards)


class PartialSource:
    """`partial/NAME/`: the shards written so far, and what they were made with (`identity`)."""

    def __init__(self, final: Path, identity: dict):
        self.final = final
        self.root = partial_dir(final)
        self.identity = identity
        self.splits = {split: SplitProgress() for split in SPLITS}
        self._tokenizer_sha: str | None = None

    def tokenizer_path(self) -> Path:
        return self.root / "tokenizer.json"

    def resume(self, fingerprint: str) -> str:
        """What the folder holds: "published" (it was whole: now renamed into place), "resumed" (its shards were
        verified and are kept, its own tokenizer too) or "fresh" (nothing usable: started empty)."""
        meta = json_or_none(self.root / "meta.json")
        whole = meta is not None and meta.get("fingerprint") == fingerprint and isinstance(meta.get("files"), dict)
        if whole and not damaged(self.root, meta["files"]):
            (self.root / PROGRESS).unlink(missing_ok=True)  # stopped between its meta.json and its rename
            self.final.parent.mkdir(parents=True, exist_ok=True)
            publish_dir(self.root, self.final)
            return "published"
        progress = json_or_none(self.root / PROGRESS)
        if progress is not None and self._matches(progress):
            self.splits = {split: SplitProgress(list(progress["splits"][split]["shards"]),
                                                bool(progress["splits"][split]["complete"])) for split in SPLITS}
            keep = {PROGRESS, "tokenizer.json"} | {f for sp in self.splits.values() for s in sp.shards
                                                   for f in s["files"].values()}
            for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
                if str(path.relative_to(self.root)) not in keep:  # written after the last record
                    path.unlink()
            self._tokenizer_sha = progress["tokenizer"]
            return "resumed"
        return self.start_fresh()

    def start_fresh(self) -> str:
        shutil.rmtree(self.root, ignore_errors=True)
        for vocab in VOCABS:
            (self.root / vocab).mkdir(parents=True)
        self.splits = {split: SplitProgress() for split in SPLITS}
        return "fresh"

    def _matches(self, progress: dict) -> bool:
        try:
            if progress.get("format") != FORMAT or progress.get("identity") != self.identity:
                return False
            expected = {"tokenizer.json": progress["tokenizer"]}
            for split in SPLITS:
                for i, shard in enumerate(progress["splits"][split]["shards"]):
                    for v in VOCABS:
                        if shard["files"][v] not in (shard_name(v, split, i, True), shard_name(v, split, i, False)):
                            return False  # only the names this module gives (never a path elsewhere)
                        expected[shard["files"][v]] = shard["sha256"][v]
        except (KeyError, TypeError, AttributeError):
            return False
        return not damaged(self.root, expected)

    def save_tokenizer(self, text: str) -> None:
        data = text.encode("utf-8")
        write_atomic(self.tokenizer_path(), lambda p: p.write_bytes(data))
        self._tokenizer_sha = hashlib.sha256(data).hexdigest()
        self.commit()

    def commit(self) -> None:
        """Record the shards complete so far (after their files were renamed into place)."""
        write_json_atomic(self.root / PROGRESS, {
            "format": FORMAT, "identity": self.identity,
            "tokenizer": self._tokenizer_sha,
            "splits": {split: {"shards": sp.shards, "complete": sp.complete} for split, sp in self.splits.items()}})

    def shard_digests(self) -> dict[str, str]:
        return {s["files"][v]: s["sha256"][v] for sp in self.splits.values() for s in sp.shards for v in VOCABS}

    def publish(self, meta: dict) -> None:
        """Write meta.json, drop the progress record and rename the folder into place."""
        write_json_atomic(self.root / "meta.json", meta)
        (self.root / PROGRESS).unlink()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        publish_dir(self.root, self.final)


class _OpenShard:
    """The shard being written: one temporary file per vocabulary, hashed as it is written."""

    def __init__(self, root: Path, split: str, index: int, dtypes: dict[str, np.dtype]):
        self.files = {v: AtomicFile(root / v, f"{split}.{index:05d}.bin") for v in VOCABS}
        self.hashes = {v: hashlib.sha256() for v in VOCABS}
        self.tokens = dict.fromkeys(VOCABS, 0)
        self.documents = 0
        self.bytes = 0
        self.dtypes = dtypes

    def write(self, vocab: str, ids: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(ids)).cast("B")
        self.files[vocab].write(data)
        self.hashes[vocab].update(data)
        self.tokens[vocab] += int(ids.size)

    def discard(self) -> None:
        for f in self.files.values():
            f.discard()


class SplitWriter:
    """Writes one split's documents, in order, into shards (both vocabularies), recording each complete shard."""

    def __init__(self, partial: PartialSource, split: str, dtypes: dict[str, np.dtype], shard_tokens: int,
                 seen: np.ndarray | None = None):
        self.partial, self.split, self.dtypes, self.shard_tokens = partial, split, dtypes, shard_tokens
        self.progress = partial.splits[split]
        self.seen = seen  # train split: which global ids occur (TRIM)
        self.open: _OpenShard | None = None

    def add(self, tokens: dict[str, tuple[np.ndarray, list[int]]], doc_bytes: list[int]) -> None:
        """Append documents: in each vocabulary their packed tokens (doc, EOS, doc, EOS, ...) and where each
        document ends in them; and their UTF-8 bytes."""
        n = len(doc_bytes)
        if self.open is not None and n and self._full():
            self._close(final=False)  # the full shard ends here: a document follows it
        ends = {v: np.asarray(tokens[v][1], dtype=np.int64) for v in VOCABS}
        i = 0
        while i < n:
            if self.open is None:
                self._start()
            before = {v: int(ends[v][i - 1]) if i else 0 for v in VOCABS}
            need = self.shard_tokens - self.open.tokens[GLOBAL]
            # The documents up to the one that fills the shard (at least one: a shard holds whole documents).
            j = max(i + 1, min(n, int(np.searchsorted(ends[GLOBAL], before[GLOBAL] + need, side="left")) + 1))
            for vocab in VOCABS:
                arr = tokens[vocab][0][before[vocab]:int(ends[vocab][j - 1])]
                if vocab == GLOBAL and self.seen is not None:
                    self.seen[arr] = True
                self.open.write(vocab, arr)
            self.open.documents += j - i
            self.open.bytes += sum(doc_bytes[i:j])
            i = j
            if i < n and self._full():
                self._close(final=False)

    def _full(self) -> bool:
        return self.open.documents > 0 and self.open.tokens[GLOBAL] >= self.shard_tokens

    def _start(self) -> None:
        index = len(self.progress.shards)
        self.open = _OpenShard(self.partial.root, self.split, index, self.dtypes)
        if index == 0:  # the stream's leading EOS lets its first document's first token be scored
            for vocab in VOCABS:
                self.open.write(vocab, np.array([EOS_ID], dtype=self.dtypes[vocab]))
            if self.seen is not None:
                self.seen[EOS_ID] = True

    def _close(self, final: bool) -> None:
        shard, index = self.open, len(self.progress.shards)
        only = final and index == 0
        files = {v: shard_name(v, self.split, index, only) for v in VOCABS}
        for v in VOCABS:
            shard.files[v].commit(self.partial.root / files[v])
        self.progress.shards.append({"documents": shard.documents, "bytes": shard.bytes, "tokens": shard.tokens,
                                     "files": files, "sha256": {v: shard.hashes[v].hexdigest() for v in VOCABS}})
        self.progress.complete = final
        self.open = None
        self.partial.commit()

    def finish(self) -> None:
        """The split's last shard (an empty split is its leading EOS alone)."""
        if self.progress.complete:
            return
        if self.open is None:
            self._start()
        self._close(final=True)

    def discard(self) -> None:
        if self.open is not None:
            self.open.discard()
            self.open = None


def seen_ids(partial: PartialSource, vocab_size: int, dtype: np.dtype, block: int = 1 << 24) -> np.ndarray:
    """Which global ids the train shards complete so far hold (a resumed prepare's TRIM vocabulary so far)."""
    seen = np.zeros(vocab_size, dtype=bool)
    for shard in partial.splits["train"].shards:
        if shard["tokens"][GLOBAL] == 0:
            continue
        tokens = np.memmap(partial.root / shard["files"][GLOBAL], dtype=dtype, mode="r")
        for start in range(0, tokens.size, block):
            seen[tokens[start:start + block]] = True
    return seen


def trim_vocab(seen: np.ndarray) -> np.ndarray:
    """Sorted global ids of the train split, with EOS: the TRIM vocabulary."""
    seen = seen.copy()
    seen[EOS_ID] = True
    return np.flatnonzero(seen).astype(np.int64)


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    write_atomic(path, write)

