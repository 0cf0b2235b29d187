"""The aggregator: weighted mean of the sources' bodies, the outer optimizer, and the embedding rules.

FedAvg (the paper's outer optimizer) sets θ ← Σ_k w_k θ_k. Nesterov (DiLoCo) takes Δ = θ − Σ_k w_k θ_k as the
outer gradient: b ← μ·b + Δ; θ ← θ − lr·(Δ + μ·b). GLOB averages the embedding like the body; TRIM averages
each row over exactly the sources that hold it, w_r = Σ_{k holds r} w_k, and leaves rows no sampled source holds
untouched (their momentum too); SPEC sends no embedding. The STD/ACT baselines are plain synchronous training:
their single participant's model is adopted as it is, whatever outer optimizer is configured.
"""

from __future__ import annotations

import torch

from dept.algorithm.types import SharedState, TableRows, TensorDict, WholeTable, WorkerUpdate
from dept.algorithm.variants import Rows, VariantSpec
from dept.config import OuterOptConfig


def aggregation_weights(updates: list[WorkerUpdate], by_tokens: bool) -> list[float]:
    raw = [float(u.tokens) if by_tokens else 1.0 for u in updates]
    total = sum(raw)
    if total <= 0:
        raise ValueError("aggregation weights sum to zero (no tokens processed)")
    return [r / total for r in raw]


def weighted_mean(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    acc = torch.zeros_like(tensors[0], dtype=torch.float32)
    for t, w in zip(tensors, weights, strict=True):
        acc.add_(t.float(), alpha=w)
    return acc


class Aggregator:
    def __init__(self, spec: VariantSpec, outer: OuterOptConfig, by_tokens: bool = True):
        self.spec = spec
        self.outer = outer
        self.by_tokens = by_tokens

    def _outer_step(self, shared: SharedState, key: str, current: torch.Tensor, target: torch.Tensor,
                    rows: torch.Tensor | None = None) -> None:
        """Move `current` (in place) toward `target`, on all rows or only on `rows`."""
        if self.outer.kind == "fedavg":
            if rows is None:
                current.copy_(target)
            else:
                current[rows] = target[rows].to(current.dtype)
            return
        mu, lr = self.outer.momentum, self.outer.lr
        buf = shared.momentum.setdefault(key, torch.zeros_like(current, dtype=torch.float32))
        if rows is None:
            delta = current.float() - target
            buf.mul_(mu).add_(delta)
            current.sub_((delta + mu * buf).to(current.dtype), alpha=lr)
        else:
            delta = current[rows].float() - target[rows]
            buf[rows] = mu * buf[rows] + delta
            current[rows] = (current[rows].float() - lr * (delta + mu * buf[rows])).to(current.dtype)

    def _mean_dict(self, dicts: list[TensorDict], weights: list[float]) -> TensorDict:
        return {name: weighted_mean([d[name] for d in dicts], weights) for name in dicts[0]}

    def apply(self, shared: SharedState, updates: list[WorkerUpdate]) -> None:
        if not updates:
            return
        keys = set(shared.body)
        for u in updates:
            if set(u.body) != keys:
                raise ValueError(f"update from '{u.key}' has body tensors {sorted(set(u.body) ^ keys)} "
                                 "that do not match the shared body")
            self._check_payload(u)
        if not self.spec.uses_outer_optimizer:
            self._adopt(shared, updates)
            return
        weights = aggregation_weights(updates, self.by_tokens)
        for name, target in self._mean_dict([u.body for u in updates], weights).items():
            self._outer_step(shared, f"body.{name}", shared.body[name], target)
        if not self.spec.has_global_embedding:
            return
        if self.spec.rows == Rows.ALL:
            tables = [u.embedding.tensors for u in updates]
            for name, target in self._mean_dict(tables, weights).items():
                self._outer_step(shared, f"embedding.{name}", shared.embedding[name], target)
        else:
            self._apply_rows(shared, updates, weights)

    def _check_payload(self, u: WorkerUpdate) -> None:
        want = None if not self.spec.has_global_embedding else WholeTable if self.spec.rows == Rows.ALL else TableRows
        got = type(u.embedding) if u.embedding is not None else None
        if got is not want:
            raise ValueError(f"update from '{u.key}' carries {got.__name__ if got else 'no embedding'}, "
                             f"{self.spec.variant.value} expects {want.__name__ if want else 'none'}")

    @staticmethod
    def _adopt(shared: SharedState, updates: list[WorkerUpdate]) -> None:
        """STD/ACT: one participant trains the one model; its state becomes the shared state unchanged."""
        if len(updates) != 1:
            raise ValueError(f"a baseline round has one participant, got {len(updates)}")
        (u,) = updates
        for name, value in u.body.items():
            shared.body[name].copy_(value)
        for name, value in u.embedding.tensors.items():
            shared.embedding[name].copy_(value)

    def _apply_rows(self, shared: SharedState, updates: list[WorkerUpdate], weights: list[float]) -> None:
        table = shared.embedding["tokens"]
        acc = torch.zeros_like(table, dtype=torch.float32)
        held_weight = torch.zeros(table.shape[0], dtype=torch.float32)
        for u, w in zip(updates, weights, strict=True):
            ids = u.embedding.ids.long()
            acc.index_add_(0, ids, u.embedding.tensors["tokens"].float(), alpha=w)
            held_weight.index_add_(0, ids, torch.full((ids.numel(),), w))
        held = torch.nonzero(held_weight > 0).squeeze(1)
        target = torch.zeros_like(acc)
        target[held] = acc[held] / held_weight[held].unsqueeze(1)
        self._outer_step(shared, "embedding.tokens", table, target, rows=held)
        if "positions" in shared.embedding:  # every source holds every position: averaged like the body
            target = weighted_mean([u.embedding.tensors["positions"] for u in updates], weights)
            self._outer_step(shared, "embedding.positions", shared.embedding["positions"], target)
