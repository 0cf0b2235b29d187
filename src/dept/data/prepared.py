"""The on-disk layout of prepared data, and read access to it.

```
DATA_DIR/manifest.json                       sources, global tokenizer, fingerprints
DATA_DIR/global_tokenizer.json
DATA_DIR/sources/NAME/meta.json              documents, UTF-8 bytes and tokens per split and tokenizer
DATA_DIR/sources/NAME/tokenizer.json         the source's own tokenizer (SPEC-OPT)
DATA_DIR/sources/NAME/{global,own}/{train,val}.bin   packed token ids (uint16 when the vocabulary allows)
DATA_DIR/sources/NAME/trim_vocab.npy         TRIM: sorted global ids that occur in the source's train split
```
"""

from __future__ import annotations

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

    def tokens(self, vocab: str, split: str) -> np.ndarray:
        dtype = np.dtype(self.meta["dtype"][vocab])
        return np.memmap(self.file(f"{vocab}/{split}.bin"), dtype=dtype, mode="r")

    def n_tokens(self, vocab: str, split: str) -> int:
        return int(self.meta["splits"][split]["tokens"][vocab])

    def trim_vocab(self) -> np.ndarray:
        return np.load(self.file("trim_vocab.npy"), allow_pickle=False)

    def own_tokenizer_path(self) -> Path:
        return self.file("tokenizer.json")


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
