"""The run folder, written only by the coordinator through this one object.

```
RUN/config.yaml                   the resolved config the run was started with
RUN/data.json                     fingerprints of the prepared data it trained on
RUN/metrics.jsonl                 one JSON object per line: `round` and `eval` events
RUN/results.json                  the final per-source results, totals of bytes moved
RUN/eval.json                     written by `dept eval`
RUN/checkpoints/round_RRRRR/      see `dept.checkpoint` (each holds the resolved config too)
RUN/sources/NAME/                 per-source state: the workers' (see `algorithm.source_store`), not this object's
```
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dept import failpoints
from dept.algorithm.types import SharedState
from dept.atomic_io import json_text, write_bytes_atomic, write_json_atomic, write_text_atomic
from dept.checkpoint import (
    METRICS,
    TrainerState,
    checkpoint_round,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from dept.config import Config, load_saved_config, resolved_yaml, save_config
from dept.errors import CheckpointError


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.results_path = self.path / "results.json"
        self.data_path = self.path / "data.json"

    # ---- config -----------------------------------------------------------------------------------------------

    def create(self, cfg: Config, data_fingerprints: dict | None) -> None:
        """Start a new run here: refuse a folder that holds anything, then write the config."""
        if self.latest_checkpoint() is not None or self.metrics_path.exists():
            raise CheckpointError(f"{self.path} already holds a run: use --resume, or another run.dir")
        if self.path.exists() and any(self.path.iterdir()):
            raise CheckpointError(f"{self.path} exists and is not empty: choose another run.dir")
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.config_path)
        if data_fingerprints is not None:
            write_json_atomic(self.data_path, data_fingerprints)

    def saved_config(self) -> Config:
        if not self.config_path.is_file():
            raise CheckpointError(f"{self.path}: not a run folder (no config.yaml)")
        cfg = load_saved_config(self.config_path)
        # the folder is where it is now: a copied or moved run reads and writes itself, never where it was made
        cfg.run.dir = str(self.path.resolve())
        return cfg

    def data_fingerprints(self) -> dict | None:
        if not self.data_path.is_file():
            return None
        try:
            found = json.loads(self.data_path.read_bytes())
        except ValueError:  # not JSON, or not UTF-8
            found = None
        if not isinstance(found, dict):
            raise CheckpointError(f"{self.data_path}: damaged (not the prepared data's fingerprints)")
        return found

    # ---- metrics and results ----------------------------------------------------------------------------------

    def append_metrics(self, record: dict) -> None:
        line = json_text(record) + "\n"
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line[:len(line) // 2])
            f.flush()
            failpoints.reached("metrics")  # a stop mid-line: the resume drops the cut line
            f.write(line[len(line) // 2:])

    def metrics(self, event: str | None = None) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_bytes().decode("utf-8", "replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a stop
            if not isinstance(record, dict):
                continue  # a damaged line
            if event is None or record.get("event") == event:
                records.append(record)
        return records

    def truncate_metrics(self, next_round: int) -> None:
        """Keep the records of rounds before `next_round` (a resumed run writes the later ones again)."""
        if not self.metrics_path.exists():
            return
        kept = [r for r in self.metrics() if isinstance(r.get("round"), int) and r["round"] < next_round]
        write_text_atomic(self.metrics_path, "".join(json_text(r) + "\n" for r in kept))

    def restore_metrics(self, checkpoint: Path, next_round: int) -> str | None:
        """Make metrics.jsonl what it was when `checkpoint` was written (the later lines belong to rounds that run
        again). Returns a note where the run's own lines up to it were damaged or missing (they are restored)."""
        saved = checkpoint / METRICS
        if not saved.is_file():  # a checkpoint of an older dept: keep the run's lines of earlier rounds
            self.truncate_metrics(next_round)
            return None
        good = saved.read_bytes()  # verified with the checkpoint
        current = self.metrics_path.read_bytes() if self.metrics_path.is_file() else b""
        if current != good:
            write_bytes_atomic(self.metrics_path, good)
        if current.startswith(good):
            return None
        return (f"{self.metrics_path}: its lines up to round {next_round} were damaged or missing; restored from "
                f"{saved}")

    def write_results(self, results: dict, name: str = "results.json") -> None:
        write_json_atomic(self.path / name, results)

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.path)

    def oldest_checkpoint_round(self) -> int:
        found = list_checkpoints(self.path)
        return checkpoint_round(found[0]) if found else 0

    def save_checkpoint(self, cfg: Config, shared: SharedState, next_round: int, variant: str,
                        last_round: dict[str, int]) -> Path:
        state = TrainerState(next_round, cfg.training_fingerprint(), variant, dict(last_round))
        metrics = self.metrics_path.read_bytes() if self.metrics_path.is_file() else b""
        return save_checkpoint(self.path, shared, state, resolved_yaml(cfg), keep=cfg.train.keep_checkpoints,
                               metrics=metrics)

    def fall_back_to(self, next_round: int) -> list[Path]:
        """Make checkpoint `round_{next_round}` the latest: newer ones move to checkpoints/.discarded/ (kept, out
        of the way). Returns where they went."""
        found = {checkpoint_round(p): p for p in list_checkpoints(self.path)}
        if next_round not in found:
            have = ", ".join(p.name for p in found.values()) or "none"
            raise CheckpointError(f"{self.path}: no checkpoint round_{next_round:05d} (there are: {have})")
        moved = []
        for r, p in sorted(found.items()):
            if r > next_round:
                target = self.path / "checkpoints" / ".discarded" / p.name
                target.parent.mkdir(exist_ok=True)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(p, target)
                moved.append(target)
        return moved

    def load_latest(self, fingerprint: str | None) -> tuple[SharedState, TrainerState]:
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            raise CheckpointError(f"{self.path}: no checkpoint")
        return load_checkpoint(ckpt, fingerprint)
