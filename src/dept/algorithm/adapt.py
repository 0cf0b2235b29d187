"""Train a fresh embedding around a frozen body: how a body meets a source it never saw (plasticity probe)."""

from __future__ import annotations

import torch

from dept.data.stream import WindowStream
from dept.model import Body, LanguageModel, SourceEmbedding


def adapt_embedding(body: Body, embedding: SourceEmbedding, stream: WindowStream, steps: int, lr: float,
                    device: torch.device) -> list[float]:
    lm = LanguageModel(body, embedding).to(device)
    body.requires_grad_(False)
    optimizer = torch.optim.AdamW(embedding.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = lm.loss(stream.next_batch().to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(embedding.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    body.requires_grad_(True)
    return losses
