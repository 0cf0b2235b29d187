"""The on-disk layout of prepared data, and read access to it.

```
DATA_DIR/manifest.json                       sources, global tokenizer, fingerprints
DATA_DIR/global_tokenizer.json
DATA_DIR/sources/NAME/meta.json              documents, UTF-8 bytes and tokens per split and tokenizer
DATA_DIR/sources/NAME/tokenizer.json         the source's own tokenizer (SPEC-OPT)
DATA_DIR/sources/NAME/{global,own}/{train,val}.bin   packed token ids (uint16 when the vocabulary allows), or
DATA_DIR/sources/NAME/{global,own}/train.00000.bin   ... a split's shards in order, when it has several
DATA_DIR/sources/NAME/trim_vocab.npy         TRIM: sorted global ids that occur in the source's train split
DATA_DIR/partial/NAME/                       a source `dept prepare` is writing (resumed if it was stopped)
```

A split's shards read as one array (`ShardedTokens`): `len()` and slices, memory-mapped, a slice may span shards.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from dept.data.integrity import verify
from dept.data.tokenizer import load_tokenizer, token_byte_lengths
from dept.errors import DataError

GLOBAL = "global"
OWN = "own"
GLOBAL_TOKENIZER = "global_tokenizer.json"


@dataclass(frozen=True)
class PreparedSource:
    name: str
    root: Path
    meta: dict

    @property
    def unseen(self) -> bool:
        return bool(self.meta["unseen"])

    def vocab_size(self, vocab: str) -> int:
        return int(self.meta["vocab_size"][vocab])

    def file(self, name: str) -> Path:
        """One of the source's files, verified against the checksum `dept prepare` recorded."""
        path = self.root / name
        if not path.is_file():
            raise DataError(f"prepared data is missing {path}: run `dept prepare` again")
        return verify(path, self.meta.get("files", {}).get(name))

    def tokens(self, vocab: str, split: str) -> np.ndarray | ShardedTokens:
        """The split's token stream, every shard verified against its checksum: a memory-mapped array, or for a
        split of several shards an object that reads like one (len, slices)."""
        dtype = np.dtype(self.meta["dtype"][vocab])
        shards = self.meta["splits"][split].get("shards")
        if shards is None:  # prepared before shards: one file
            return np.memmap(self.file(f"{vocab}/{split}.bin"), dtype=dtype, mode="r")
        paths = [self.file(s["files"][vocab]) for s in shards]
        if len(paths) == 1:
            return np.memmap(paths[0], dtype=dtype, mode="r")
        return ShardedTokens(paths, [int(s["tokens"][vocab]) for s in shards], dtype)

    def n_tokens(self, vocab: str, split: str) -> int:
        return int(self.meta["splits"][split]["tokens"][vocab])

    def trim_vocab(self) -> np.ndarray:
        return np.load(self.file("trim_vocab.npy"), allow_pickle=False)

    def own_tokenizer_path(self) -> Path:
        return self.file("tokenizer.json")


class ShardedTokens:
    """Token shards read as one 1-D array: `len()`, integer indices and slices (which may span shards) give what
    slicing their concatenation would, read through memory maps opened on first use."""

    def __init__(self, paths: list[Path], counts: list[int], dtype: np.dtype):
        self.paths, self.counts, self.dtype = list(paths), list(counts), np.dtype(dtype)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64).tolist()
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    @property
    def size(self) -> int:
        return len(self)

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def _shard(self, i: int) -> np.ndarray:
        if i not in self._maps:
            self._maps[i] = np.memmap(self.paths[i], dtype=self.dtype, mode="r") if self.counts[i] else \
                np.empty(0, dtype=self.dtype)
        return self._maps[i]

    def _range(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty(0, dtype=self.dtype)
        first = bisect.bisect_right(self.starts, start) - 1
        parts = []
        i = first
        while i < len(self.paths) and self.starts[i] < stop:
            lo, hi = max(start, self.starts[i]) - self.starts[i], min(stop, self.starts[i + 1]) - self.starts[i]
            parts.append(self._shard(i)[lo:hi])
            i += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._range(start, stop)
            picks = np.arange(start, stop, step)
            if picks.size == 0:
                return np.empty(0, dtype=self.dtype)
            lo = int(picks.min())
            return self._range(lo, int(picks.max()) + 1)[picks - lo]
        index = int(key)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {key} is out of bounds for {len(self)} tokens")
        return self._range(index, index + 1)[0]

    def __array__(self, dtype=None, copy=None):
        whole = self._range(0, len(self))
        return whole if dtype is None else whole.astype(dtype)

    def __getstate__(self) -> dict:  # pickled by paths, never by content
        return {"paths": self.paths, "counts": self.counts, "dtype": self.dtype.str}

    def __setstate__(self, state: dict) -> None:
        self.__init__([Path(p) for p in state["paths"]], state["counts"], np.dtype(state["dtype"]))


class PreparedData:
    """Read-only view of a prepared data folder. A source's files are read only when it is asked for, so a site
    (a torchrun node, a Flower SuperNode) needs only the folders of the sources it serves."""

    def __init__(self, root: Path):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise DataError(f"no prepared data in {self.root}: run `dept prepare CONFIG` first")
        self.manifest = _read_json(path)
        self._sources: dict[str, PreparedSource] = {}

    def _digest(self, name: str) -> str | None:
        return self.manifest.get("files", {}).get(name)

    @property
    def global_tokenizer_path(self) -> Path:
        return verify(self.root / GLOBAL_TOKENIZER, self._digest(GLOBAL_TOKENIZER))

    @property
    def global_vocab_size(self) -> int:
        return int(self.manifest["global_vocab_size"])

    @cached_property
    def global_byte_lengths(self) -> np.ndarray:
        return token_byte_lengths(load_tokenizer(self.global_tokenizer_path))

    def own_byte_lengths(self, name: str) -> np.ndarray:
        return token_byte_lengths(load_tokenizer(self.source(name).own_tokenizer_path()))

    def source(self, name: str) -> PreparedSource:
        if name not in self._sources:
            meta = self.root / "sources" / name / "meta.json"
            if name not in self.manifest["sources"] or not meta.is_file():
                raise DataError(f"source '{name}' is not in the prepared data {self.root}: run `dept prepare` again")
            verify(meta, self._digest(f"sources/{name}/meta.json"))
            self._sources[name] = PreparedSource(name, meta.parent, _read_json(meta))
        return self._sources[name]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: damaged ({err.__class__.__name__}): run `dept prepare` again") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: damaged (not a JSON object): run `dept prepare` again")
    return data
