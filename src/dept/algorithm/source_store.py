"""Per-source state that waits on disk between the rounds in which the source is sampled.

A source's state (its own embedding in SPEC/SPEC-OPT, its AdamW state, its data-stream position, and with
`train.compression` the residual its error feedback keeps) is written as
`DIR/NAME/rRRRRR.safetensors` + `.json` after the round RRRRR that trained it. Loading for round t takes the
newest version written before t, so a run resumed from the checkpoint of round t never sees a version that a
killed round wrote after it; `prune` drops versions no checkpoint can need. Only the active source's state is ever
in memory, so memory does not grow with the number of sources. The store belongs to the worker that serves the
source (in a federation, to the source's site); the coordinator never reads it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as tensors_from_bytes
from safetensors.torch import save as tensors_to_bytes

from dept.algorithm.types import Mixture
from dept.atomic_io import write_bytes_atomic, write_json_atomic
from dept.config import is_source_name
from dept.data.stream import StreamPosition
from dept.errors import CheckpointError

_VERSION = re.compile(r"^r(\d{6})\.json$")


@dataclass
class SourceState:
    embedding: dict[str, torch.Tensor] = field(default_factory=dict)  # SPEC/SPEC-OPT table (+ positions)
    optimizer: dict | None = None  # torch AdamW state_dict
    streams: dict[str, StreamPosition] = field(default_factory=dict)  # one per data stream (STD: per source)
    extra: dict = field(default_factory=dict)  # e.g. the mixture's step counter
    rounds_trained: int = 0
    residual: dict[str, torch.Tensor] = field(default_factory=dict)  # `train.compression`: error feedback


def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    return {"state": state, "param_groups": meta["param_groups"]}


class SourceStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _folder(self, name: str) -> Path:
        if not (is_source_name(name) or name == Mixture.key):
            raise CheckpointError(f"'{name}' is not a source name: no state is read or written for it under "
                                  f"{self.root}")
        return self.root / name

    def _versions(self, name: str) -> list[int]:
        folder = self._folder(name)
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _VERSION.match(p.name)))

    def load(self, name: str, before_round: int, expect: int | None = None) -> SourceState | None:
        """The newest version written before `before_round`; with `expect`, it must be that round's (the one the
        run's checkpoint says the source last trained in): a missing version is an error, never an older one."""
        versions = [v for v in self._versions(name) if v < before_round]
        if expect is not None and (not versions or versions[-1] != expect):
            raise CheckpointError(f"{self._folder(name) / f'r{expect:06d}.json'}: missing: the state this source saved "
                                  f"after round {expect + 1}, which the run's checkpoint needs (restore it, or "
                                  "resume from an older checkpoint with --from-checkpoint)")
        if not versions:
            return None
        stem = self._folder(name) / f"r{versions[-1]:06d}"
        meta_path, tensors_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict) or not {"optimizer", "extra", "rounds_trained", "streams"} <= meta.keys():
                raise ValueError("fields missing")
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{meta_path}: damaged source state ({err})") from None
        if not tensors_path.is_file():
            raise CheckpointError(f"{tensors_path}: missing (its {meta_path.name} is there)")
        data = tensors_path.read_bytes()  # read once: checked and parsed from memory
        if "sha256" in meta and hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise CheckpointError(f"{tensors_path}: checksum mismatch (damaged source state)")
        try:
            tensors = tensors_from_bytes(data)
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{tensors_path}: damaged source state ({err})") from None
        embedding = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("embedding.")}
        try:
            optimizer = unflatten_optimizer(tensors, meta["optimizer"]) if meta["optimizer"] else None
            streams = {k: StreamPosition(**v) for k, v in meta["streams"].items()}
        except (TypeError, ValueError, KeyError, AttributeError) as err:  # fields renamed or retyped by damage
            raise CheckpointError(f"{meta_path}: damaged source state ({type(err).__name__}: {err})") from None
        residual = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("residual.")}
        return SourceState(embedding, optimizer, streams, meta["extra"], meta["rounds_trained"], residual)

    def prune_all(self, keep_from_round: int) -> None:
        """`prune` every source this store holds: a source not trained again must not keep a stale version."""
        for folder in self.root.glob("*/"):
            if is_source_name(folder.name) or folder.name == Mixture.key:
                self.prune(folder.name, keep_from_round)

    def load_after(self, name: str, round_index: int | None) -> SourceState | None:
        """The state as saved after round `round_index` (None: the source has no state yet)."""
        return None if round_index is None else self.load(name, round_index + 1, expect=round_index)

    def save(self, name: str, round_index: int, state: SourceState) -> None:
        stem = self._folder(name) / f"r{round_index:06d}"
        tensors = {f"embedding.{k}": v.detach().contiguous().cpu() for k, v in state.embedding.items()}
        tensors.update({f"residual.{k}": v.detach().contiguous().cpu() for k, v in state.residual.items()})
        opt_meta = None
        if state.optimizer is not None:
            opt_tensors, opt_meta = flatten_optimizer(state.optimizer)
            tensors.update(opt_tensors)
        # Tensors first, then the JSON (with their checksum) that makes the version visible to `load`.
        data = tensors_to_bytes(tensors)
        write_bytes_atomic(stem.with_suffix(".safetensors"), data)
        write_json_atomic(stem.with_suffix(".json"), {
            "optimizer": opt_meta, "extra": state.extra, "rounds_trained": state.rounds_trained,
            "streams": {k: {"epoch": v.epoch, "cursor": v.cursor} for k, v in state.streams.items()},
            "sha256": hashlib.sha256(data).hexdigest(),
        })

    def prune(self, name: str, keep_from_round: int) -> None:
        """Drop the source's versions that no resume from round `keep_from_round` or later can need: keep the
        newest version before it and everything after it. A killed round's versions need no discarding: the
        resumed run trains the same sources in that round again (sampling is seeded by round) and overwrites them."""
        for v in [v for v in self._versions(name) if v < keep_from_round][:-1]:
            for suffix in (".json", ".safetensors"):
                (self._folder(name) / f"r{v:06d}{suffix}").unlink(missing_ok=True)
