"""A source's embeddings: token table tied to the output head, and learned positions when the model uses them.

In TRIM the table holds only the rows of the source's vocabulary V_k; `global_ids[i]` is the global token id of
row i, which is what the aggregator needs to average each row over exactly the sources that hold it.
"""

from __future__ import annotations

import torch
from torch import nn

from dept.config import ModelConfig
from dept.model.body import init_normal


class SourceEmbedding(nn.Module):
    def __init__(self, vocab_size: int, cfg: ModelConfig, global_ids: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.tokens = nn.Embedding(vocab_size, cfg.d_model)
        self.positions = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.positions == "learned" else None
        if global_ids is not None and global_ids.numel() != vocab_size:
            raise ValueError(f"global_ids has {global_ids.numel()} rows, the table {vocab_size}")
        self.global_ids = global_ids

    @property
    def vocab_size(self) -> int:
        return self.tokens.num_embeddings

    def reset_parameters(self, generator: torch.Generator) -> None:
        init_normal(self.tokens.weight, self.cfg.init_std, generator)
        if self.positions is not None:
            init_normal(self.positions.weight, self.cfg.init_std, generator)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tables by name ("tokens", and "positions" when learned): what is stored, sent and averaged."""
        out = {"tokens": self.tokens.weight}
        if self.positions is not None:
            out["positions"] = self.positions.weight
        return out

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, table in self.tensors().items():
            table.copy_(tensors[name])

    def embed(self, ids: torch.Tensor, known: torch.Tensor | None = None) -> torch.Tensor:
        """Token (+ position) vectors; where `known` is False the token has no row and contributes zeros."""
        h = self.tokens(ids)  # (B, T, C)
        if known is not None:
            h = h * known.unsqueeze(-1).to(h.dtype)
        if self.positions is not None:
            h = h + self.positions.weight[: ids.shape[1]]
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.tokens.weight.t()  # tied head: (B, T, V)
