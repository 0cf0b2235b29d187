"""A language model = one source's embeddings around the shared body (forward, loss, generation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dept.model.body import Body
from dept.model.embedding import SourceEmbedding


class LanguageModel(nn.Module):
    def __init__(self, body: Body, embedding: SourceEmbedding):
        super().__init__()
        self.body = body
        self.embedding = embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding.logits(self.body(self.embedding.embed(ids)))

    def token_losses(self, windows: torch.Tensor) -> torch.Tensor:
        """Per-token loss in nats of predicting windows[:, 1:] from windows[:, :-1]: (B, T)."""
        inputs, targets = windows[:, :-1], windows[:, 1:]
        logits = self(inputs)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        inputs, targets = windows[:, :-1], windows[:, 1:]
        logits = self(inputs)
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        max_len = self.body.cfg.max_seq_len
        for _ in range(max_new_tokens):
            logits = self(ids[:, -max_len:])[:, -1].float()
            if temperature <= 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            ids = torch.cat([ids, nxt], dim=1)
        return ids
