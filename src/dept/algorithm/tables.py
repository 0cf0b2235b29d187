"""Build the table a participant trains or is evaluated with, from what it received or what it keeps."""

from __future__ import annotations

import torch

from dept.algorithm.runtime import seeded_generator
from dept.algorithm.types import EmbeddingPayload, Source, SourceProfile, TableRows, TensorDict, WholeTable
from dept.config import ModelConfig
from dept.model import SourceEmbedding


def own_embedding(profile: SourceProfile, model: ModelConfig, seed: int, tensors: TensorDict | None) -> SourceEmbedding:
    """A SPEC/SPEC-OPT source's table: as saved, or the seeded init it starts from the first time it is sampled."""
    held = None if profile.held_ids is None else torch.from_numpy(profile.held_ids)
    emb = SourceEmbedding(profile.table_rows, model, global_ids=held)
    if tensors:
        emb.load_tensors(tensors)
    else:
        index = profile.participant.index if isinstance(profile.participant, Source) else -1
        emb.reset_parameters(seeded_generator(seed, 104729, index))
    return emb


def received_embedding(profile: SourceProfile, model: ModelConfig, payload: EmbeddingPayload) -> SourceEmbedding:
    """GLOB/STD/ACT: the whole global table; TRIM: the source's rows of it (row i = global id held_ids[i])."""
    if isinstance(payload, WholeTable):
        emb = SourceEmbedding(payload.tensors["tokens"].shape[0], model)
    elif isinstance(payload, TableRows):
        held = torch.from_numpy(profile.held_ids)
        if payload.tensors["tokens"].shape[0] != held.numel():
            raise ValueError(f"'{profile.participant.key}' received {payload.tensors['tokens'].shape[0]} rows, "
                             f"its vocabulary has {held.numel()}")
        emb = SourceEmbedding(held.numel(), model, global_ids=held)
    else:
        raise ValueError(f"'{profile.participant.key}' received no table to train")
    emb.load_tensors(payload.tensors)
    return emb
