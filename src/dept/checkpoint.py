"""Checkpoints: body, global embedding and outer-optimizer state as safetensors; trainer state and the resolved
config beside them.

`RUN/checkpoints/round_RRRRR/` is written under a temporary name, every file with its SHA-256 in
`manifest.json`, then renamed into place: a folder with that name is complete. It also keeps the run's
`metrics.jsonl` as it was then, so a resume restores the metrics of the rounds it keeps even when the run's own
file was cut short or damaged. Loading verifies every checksum
and that the checkpoint was made with the same training settings (the config fingerprint). `config.yaml` in the
folder is the whole resolved config of the run that wrote it, so a checkpoint explains itself when copied alone.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dept.algorithm.types import SharedState
from dept.atomic_io import (
    publish_dir,
    sha256_file,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from dept.errors import CheckpointError

_NAME = re.compile(r"^round_(\d{5,})$")
METRICS = "metrics.jsonl"


@dataclass
class TrainerState:
    next_round: int
    fingerprint: str
    variant: str
    last_round: dict[str, int] = field(default_factory=dict)  # participant -> its last aggregated round
    # Not used: every draw of the method comes from a seeded generator (`runtime.seeded_generator`), so torch's
    # global RNG is not part of a run's state. Read from older checkpoints, written empty.
    rng_state: list[int] = field(default_factory=list)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_atomic(path, lambda p: save_file(tensors, str(p)))


def checkpoint_round(path: Path) -> int:
    """The round a checkpoint resumes at (its `next_round`), from its folder name."""
    return int(_NAME.match(path.name).group(1))


def save_checkpoint(run_dir: Path, shared: SharedState, state: TrainerState, config_yaml: str, keep: int,
                    metrics: bytes | None = None) -> Path:
    """`metrics`: the run's metrics.jsonl up to this checkpoint, kept (checksummed) to restore it on resume."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"round_{state.next_round:05d}"
    tmp = root / f".round_{state.next_round:05d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_tensors(tmp / "body.safetensors", shared.body)
    _save_tensors(tmp / "embedding.safetensors", shared.embedding)
    _save_tensors(tmp / "outer.safetensors", shared.momentum)
    write_json_atomic(tmp / "state.json", state.__dict__)
    write_text_atomic(tmp / "config.yaml", config_yaml)
    if metrics is not None:
        write_bytes_atomic(tmp / METRICS, metrics)
    files = sorted(p.name for p in tmp.iterdir())
    write_json_atomic(tmp / "manifest.json", {"files": {f: sha256_file(tmp / f) for f in files}})
    publish_dir(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if root.exists() and not root.is_dir():
        raise CheckpointError(f"{root}: not a folder (the run's checkpoints go there)")
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, fingerprint: str | None = None) -> tuple[SharedState, TrainerState]:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (no manifest.json)")
    try:
        files = json.loads(manifest_path.read_bytes())["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):  # not JSON, not UTF-8, or no file list
        raise CheckpointError(f"{manifest_path}: damaged manifest (corrupt checkpoint)") from None
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: missing file {name}")
        if sha256_file(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch (corrupt checkpoint)")
    state = TrainerState(**json.loads((path / "state.json").read_text()))
    if fingerprint is not None and state.fingerprint != fingerprint:
        raise CheckpointError(f"{path}: checkpoint was made with another config (fingerprint {state.fingerprint}, "
                              f"this config {fingerprint})")
    shared = SharedState(body=load_file(str(path / "body.safetensors")),
                         embedding=load_file(str(path / "embedding.safetensors")),
                         momentum=load_file(str(path / "outer.safetensors")))
    return shared, state
