"""The one place that says, per variant, which vocabulary a source uses, what its table holds, and what is sent.

| variant  | vocabulary | table rows  | embedding    | downloaded / uploaded each round     | outer optimizer |
|----------|------------|-------------|--------------|---------------------------------------|-----------------|
| GLOB     | global     | all of V    | shared       | body + whole table                    | yes             |
| TRIM     | global     | V_k         | shared rows  | body + its rows (+ their ids up)      | yes             |
| SPEC     | global     | V_k         | local        | body                                  | yes             |
| SPEC-OPT | own        | all its own | local        | body                                  | yes             |
| STD, ACT | global     | all of V    | shared       | (one participant: the mixture)        | no: plain sync  |

With `train.compression` (bf16/int8) the DEPT variants upload the pseudo-gradient θ_start − θ_k of the same
tensors, quantised with error feedback (`dept.algorithm.compression`); downloads stay fp32.

V_k = the global token ids occurring in source k's training split (`trim_vocab.npy`). A table that holds only
V_k also restricts that source's softmax to V_k (tied head); how a token outside V_k is scored in evaluation is
`eval.perplexity.HeldRows`. Callers ask this table; they never branch on the variant's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

from dept.algorithm.types import (
    Download,
    EmbeddingPayload,
    SharedState,
    SourceProfile,
    TableRows,
    TensorDict,
    WholeTable,
)
from dept.config import Variant
from dept.data.prepared import GLOBAL, OWN


class Rows(StrEnum):
    ALL = "all"  # the whole vocabulary of the tokenizer in use
    HELD = "held"  # only V_k, the global ids in the source's training data


class Sharing(StrEnum):
    SHARED = "shared"  # part of the aggregated global table
    LOCAL = "local"  # the source's own, never sent


@dataclass(frozen=True)
class VariantSpec:
    variant: Variant
    vocabulary: str  # GLOBAL or OWN (the source's own tokenizer)
    rows: Rows
    sharing: Sharing
    baseline: bool = False  # STD/ACT: one model on the temperature-sampled mixture, plain synchronous training
    resets_embedding: bool = False  # ACT (active forgetting)

    @property
    def has_global_embedding(self) -> bool:
        return self.sharing == Sharing.SHARED

    @property
    def uses_outer_optimizer(self) -> bool:
        """DEPT variants aggregate with FedAvg/Nesterov; the baselines adopt their single model as it is."""
        return not self.baseline

    @property
    def compresses_upload(self) -> bool:
        """Whether `train.compression` applies: the DEPT variants send a pseudo-gradient to the outer step; the
        baselines stand for per-step synchronous training (accounted as STD's all-reduce) and send their model."""
        return not self.baseline

    def held_ids(self, trim_vocab: np.ndarray) -> np.ndarray | None:
        """The global ids a source's table holds, given its V_k; None = the whole vocabulary."""
        return trim_vocab if self.rows == Rows.HELD else None

    # ---- what travels --------------------------------------------------------------------------------------

    def _shared_table(self, shared: SharedState, profile: SourceProfile) -> EmbeddingPayload:
        if not self.has_global_embedding:
            return None
        if self.rows == Rows.ALL:
            return WholeTable(dict(shared.embedding))
        ids = torch.from_numpy(profile.held_ids).long()
        tensors = {"tokens": shared.embedding["tokens"][ids]}  # indexing copies
        if "positions" in shared.embedding:  # every source holds every position
            tensors["positions"] = shared.embedding["positions"]
        return TableRows(tensors)

    def download(self, shared: SharedState, profile: SourceProfile) -> Download:
        """Body + GLOB/STD/ACT: the whole table; TRIM: the source's rows; SPEC/SPEC-OPT: nothing else.

        Read-only views of `shared` where no slicing is needed (the shared state does not change while a round
        runs, and a worker copies what it receives into its own model), so a round costs no copy per participant.
        """
        return Download(dict(shared.body), self._shared_table(shared, profile))

    def eval_table(self, shared: SharedState, profile: SourceProfile) -> EmbeddingPayload:
        """The table a source is evaluated with, read-only: the shared one (or its rows) where there is one."""
        return self._shared_table(shared, profile)

    @property
    def payload_type(self) -> type[WholeTable] | type[TableRows] | None:
        """The kind of table a round's update carries (None: no table travels)."""
        if not self.has_global_embedding:
            return None
        return WholeTable if self.rows == Rows.ALL else TableRows

    def upload(self, tensors: TensorDict, held_ids: torch.Tensor | None) -> EmbeddingPayload:
        """What a worker sends of its trained table: GLOB the whole, TRIM its rows with their ids, SPEC nothing."""
        if not self.has_global_embedding:
            return None
        tensors = {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
        if self.payload_type is WholeTable:
            return WholeTable(tensors)
        return TableRows(tensors, held_ids.to(torch.int32))


SPECS: dict[Variant, VariantSpec] = {
    Variant.GLOB: VariantSpec(Variant.GLOB, GLOBAL, Rows.ALL, Sharing.SHARED),
    Variant.TRIM: VariantSpec(Variant.TRIM, GLOBAL, Rows.HELD, Sharing.SHARED),
    Variant.SPEC: VariantSpec(Variant.SPEC, GLOBAL, Rows.HELD, Sharing.LOCAL),
    Variant.SPEC_OPT: VariantSpec(Variant.SPEC_OPT, OWN, Rows.ALL, Sharing.LOCAL),
    Variant.STD: VariantSpec(Variant.STD, GLOBAL, Rows.ALL, Sharing.SHARED, baseline=True),
    Variant.ACT: VariantSpec(Variant.ACT, GLOBAL, Rows.ALL, Sharing.SHARED, baseline=True, resets_embedding=True),
}


def spec_of(variant: Variant) -> VariantSpec:
    return SPECS[Variant(variant)]
