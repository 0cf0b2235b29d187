"""What the aggregator hands a sampled source at the start of a round, per variant."""

from __future__ import annotations

import torch

from dept.algorithm.types import Download, SharedState
from dept.algorithm.variants import EmbeddingRule, VariantSpec


def download_for(spec: VariantSpec, shared: SharedState, trim_ids: torch.Tensor | None = None) -> Download:
    """GLOB/STD/ACT: body + the whole table; TRIM: body + the source's rows (+ positions); SPEC: body only."""
    body = {k: v.clone() for k, v in shared.body.items()}
    if spec.embedding == EmbeddingRule.SHARED:
        return Download(body, {k: v.clone() for k, v in shared.embedding.items()})
    if spec.embedding == EmbeddingRule.ROWS:
        if trim_ids is None:
            raise ValueError("TRIM needs the source's vocabulary (its global token ids)")
        emb = {"tokens": shared.embedding["tokens"][trim_ids.long()].clone()}
        if "positions" in shared.embedding:
            emb["positions"] = shared.embedding["positions"].clone()
        return Download(body, emb)
    return Download(body)
