"""The model a run gives one source, as a model folder: the last checkpoint's body and the table the source uses.

| variant       | table                                                   | tokenizer               |
|---------------|---------------------------------------------------------|-------------------------|
| GLOB, STD, ACT| the global table                                        | global                  |
| TRIM          | the global table (every source's rows of it)            | global                  |
| SPEC          | the source's V_k rows at their global ids, zeros elsewhere | global               |
| SPEC-OPT      | the source's own table                                  | the source's own        |

TRIM and SPEC trained source k with a softmax over V_k. A standalone model needs one over the tokenizer's whole
vocabulary: TRIM's shared table has a row for every token; SPEC's source holds only V_k, so the other rows are
zero vectors, which is exactly what such a token fed into the body during training and evaluation (see
`model.SourceEmbedding.embed`), and their logit is 0. Consolidation (`dept consolidate`) gives SPEC and SPEC-OPT a
trained global table instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dept.algorithm.source_store import SourceStore
from dept.algorithm.variants import spec_of
from dept.data.prepared import OWN, PreparedData
from dept.data.tokenizer import load_tokenizer
from dept.errors import CheckpointError, DeptError
from dept.posttrain.folder import ModelFolder
from dept.run_folder import RunFolder


class RunModels:
    """A run's last checkpoint, read once, and the model folder of any of its sources."""

    def __init__(self, run_dir: Path, state_dir: Path | None = None):
        self.run = RunFolder(run_dir)
        self.cfg = self.run.saved_config()
        if self.run.latest_checkpoint() is None:
            raise CheckpointError(f"{run_dir}: the run has no checkpoint yet (train it first, or resume it)")
        self.shared, self.state = self.run.load_latest(self.cfg.training_fingerprint())
        self.spec = spec_of(self.cfg.train.variant)
        self.data = PreparedData(self.cfg.data_dir)
        self.store = SourceStore(Path(state_dir) if state_dir else self.run.path / "sources")

    @property
    def variant(self) -> str:
        return self.spec.variant.value

    @property
    def round(self) -> int:
        return self.state.next_round

    @property
    def source_names(self) -> list[str]:
        return [s.name for s in self.cfg.data.sources]

    @property
    def trained_names(self) -> list[str]:
        return [s.name for s in self.cfg.trained_sources]

    def _origin(self, source: str | None) -> dict:
        return {"kind": "source" if source else "global", "run": str(self.run.path.resolve()),
                "variant": self.variant, "round": self.round, "source": source}

    def global_model(self) -> ModelFolder:
        """GLOB/TRIM/STD/ACT: the body with the shared global table and the global tokenizer."""
        if not self.spec.has_global_embedding:
            raise DeptError(f"{self.run.path}: a {self.variant} run has no global table: name a source "
                            f"(--source, one of {', '.join(self.trained_names)}) or consolidate the run first")
        return ModelFolder(self.cfg.model, self.shared.body, dict(self.shared.embedding),
                           load_tokenizer(self.data.global_tokenizer_path), self._origin(None))

    def source_model(self, name: str) -> ModelFolder:
        if name not in self.source_names:
            raise DeptError(f"source '{name}' is not in run {self.run.path} (sources: {', '.join(self.source_names)})")
        if self.spec.has_global_embedding:
            folder = self.global_model()
            folder.origin = self._origin(name)
            return folder
        saved = self.store.load_after(name, self.state.last_round.get(name))
        if saved is None:
            raise DeptError(f"source '{name}' has no table in run {self.run.path}: it was never trained "
                            f"({'unseen' if name not in self.trained_names else 'not sampled yet'}); "
                            "`dept adapt` gives a new source a table")
        src = self.data.source(name)
        if self.spec.vocabulary == OWN:
            return ModelFolder(self.cfg.model, self.shared.body, saved.embedding,
                               load_tokenizer(src.own_tokenizer_path()), self._origin(name))
        held = torch.from_numpy(self.spec.held_ids(src.trim_vocab())).long()
        tokens = torch.zeros(self.data.global_vocab_size, self.cfg.model.d_model)
        tokens[held] = saved.embedding["tokens"]
        table = {**saved.embedding, "tokens": tokens}
        return ModelFolder(self.cfg.model, self.shared.body, table,
                           load_tokenizer(self.data.global_tokenizer_path), self._origin(name))

    def model(self, source: str | None) -> ModelFolder:
        return self.source_model(source) if source else self.global_model()
