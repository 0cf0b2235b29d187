"""One optimisation step, shared by the worker, the embedding adaptation and the step benchmark.

AdamW with the configured betas, eps and weight decay (fused on CUDA); the loss under the configured precision;
gradient clipping by global norm; the learning rate set per step by the caller from the global schedule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

from dept.algorithm.replicas import no_sync
from dept.algorithm.runtime import autocast_context
from dept.config import InnerOptConfig
from dept.model import LanguageModel


def build_optimizer(params: Iterable[torch.nn.Parameter], inner: InnerOptConfig, device: torch.device,
                    fused: bool | None = None, foreach: bool | None = None) -> torch.optim.AdamW:
    """AdamW; `fused`/`foreach` default to fused on CUDA and torch's default elsewhere (the per-tensor loop on
    CPU). `dept.algorithm.speed.optimizer_kwargs` says which is fastest where."""
    if fused is None and not foreach:
        fused = device.type == "cuda" or None
    return torch.optim.AdamW(list(params), lr=inner.lr, betas=inner.betas, eps=inner.eps,
                             weight_decay=inner.weight_decay, fused=fused, foreach=foreach)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(lm: LanguageModel, optimizer: torch.optim.Optimizer, batch: torch.Tensor, grad_clip: float,
               precision: str = "fp32", grad_norms: list[torch.Tensor] | None = None,
               micro_batch: int = 0) -> torch.Tensor:
    """Forward, backward, clip (over the optimizer's parameters), step. Returns the detached loss (no sync);
    `grad_norms` receives the global gradient norm before clipping (a tensor: no sync either).

    `micro_batch` > 0 runs the batch through forward and backward that many sequences at a time, each pass's
    mean loss weighted by its share of the sequences (all of one length), so the gradient is the whole batch's
    mean-loss gradient up to float rounding. A data-parallel `lm` (see `replicas`) averages gradients across
    its replicas in the last pass's backward only."""
    if not micro_batch or micro_batch >= batch.shape[0]:
        with autocast_context(batch.device, precision):
            loss = lm.loss(batch)
        loss.backward()
    else:
        chunks = batch.split(micro_batch)
        loss = torch.zeros((), device=batch.device)
        for i, chunk in enumerate(chunks):
            with no_sync(lm) if i < len(chunks) - 1 else contextlib.nullcontext():
                with autocast_context(batch.device, precision):
                    part = lm.loss(chunk) * (chunk.shape[0] / batch.shape[0])
                part.backward()
            loss += part.detach().float()
    if grad_clip > 0 or grad_norms is not None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if grad_norms is not None:  # a sharded model's norm is a replicated DTensor: its local value is the norm
            grad_norms.append(norm.detach().to_local() if hasattr(norm, "to_local") else norm.detach())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
