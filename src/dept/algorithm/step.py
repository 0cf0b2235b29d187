"""One optimisation step, shared by the worker, the embedding adaptation and the step benchmark.

AdamW with the configured betas, eps and weight decay (fused on CUDA); the loss under the configured precision;
gradient clipping by global norm; the learning rate set per step by the caller from the global schedule.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

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
               precision: str = "fp32", grad_norms: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Forward, backward, clip (over the optimizer's parameters), step. Returns the detached loss (no sync);
    `grad_norms` receives the global gradient norm before clipping (a tensor: no sync either)."""
    with autocast_context(batch.device, precision):
        loss = lm.loss(batch)
    loss.backward()
    if grad_clip > 0 or grad_norms is not None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if grad_norms is not None:
            grad_norms.append(norm.detach())
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
