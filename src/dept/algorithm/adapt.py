"""Train an embedding around a frozen body: how a body meets a source it never saw (plasticity probe).

The same step as pre-training (`step.train_step`: the configured AdamW, clipping and precision), on the
embedding's parameters only, at a constant learning rate.
"""

from __future__ import annotations

import torch

from dept.algorithm.step import build_optimizer, train_step
from dept.config import InnerOptConfig
from dept.data.stream import WindowStream
from dept.model import Body, LanguageModel, SourceEmbedding


def adapt_embedding(body: Body, embedding: SourceEmbedding, stream: WindowStream, steps: int,
                    inner: InnerOptConfig, device: torch.device, precision: str = "fp32") -> list[float]:
    lm = LanguageModel(body, embedding).to(device)
    body.requires_grad_(False)
    optimizer = build_optimizer(embedding.parameters(), inner, device)
    losses = [train_step(lm, optimizer, stream.next_batch().to(device), inner.grad_clip, precision)
              for _ in range(steps)]
    body.requires_grad_(True)
    return torch.stack(losses).float().tolist() if losses else []
