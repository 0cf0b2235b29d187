"""The aggregator: weighted mean of the sources' bodies, the outer optimizer, and the embedding rules.

FedAvg (the paper's outer optimizer) sets θ ← Σ_k w_k θ_k. Nesterov (DiLoCo) takes Δ = θ − Σ_k w_k θ_k as the
outer gradient: b ← μ·b + Δ; θ ← θ − lr·(Δ + μ·b). GLOB averages the embedding like the body; TRIM averages
each row over exactly the sources that hold it, w_r = Σ_{k holds r} w_k, and leaves rows no sampled source holds
untouched (their momentum too); SPEC sends no embedding. The STD/ACT baselines are plain synchronous training:
their single participant's model is adopted as it is, whatever outer optimizer is configured.

Aggregation is split where processes meet: `accumulate` forms the weighted sums of the updates at hand (a
`PartialSums`, additive), an engine whose updates live in several processes sums those across them (torchrun:
one all-reduce per tensor), and `finish` turns the total into the outer step. With every update in one process
the sum needs no combining and the result is the same as one weighted mean.

A compressed update (`train.compression`) carries θ_start − θ_k quantised: it is turned back into θ_k with the
θ_start this aggregator sent, the shared state before the round (`compression.trained_values`), and from there on
is averaged like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dept.algorithm.compression import trained_values
from dept.algorithm.types import QuantizedTensors, SharedState, TableRows, TensorDict, WorkerUpdate
from dept.algorithm.variants import Rows, VariantSpec
from dept.config import OuterOptConfig


@dataclass
class PartialSums:
    """Σ w_k θ_k over some updates (weights already normalised over the whole round), and for TRIM the weight of
    each row's holders. Two of them add up tensor by tensor."""

    body: TensorDict
    table: TensorDict = field(default_factory=dict)  # GLOB/baselines: whole tables; TRIM: dense (V, d) row sums
    held_weight: torch.Tensor | None = None  # TRIM: (V,) Σ w_k over the sources holding each row

    def tensors(self) -> TensorDict:
        """Every tensor by a stable name: what an engine sums across processes."""
        out = {f"body.{k}": v for k, v in self.body.items()}
        out.update({f"table.{k}": v for k, v in self.table.items()})
        if self.held_weight is not None:
            out["held_weight"] = self.held_weight
        return out


def aggregation_weights(updates: list[WorkerUpdate], by_tokens: bool) -> list[float]:
    raw = [float(u.tokens) if by_tokens else 1.0 for u in updates]
    total = sum(raw)
    if total <= 0:
        raise ValueError("aggregation weights sum to zero (no tokens processed)")
    return [r / total for r in raw]


def _zeros(tensors: TensorDict) -> TensorDict:
    return {k: torch.zeros_like(v, dtype=torch.float32) for k, v in tensors.items()}


def _table_start(shared: SharedState, payload) -> TensorDict:
    """The table a compressed upload's pseudo-gradient is relative to: the shared one (TRIM: the uploaded rows)."""
    if not isinstance(payload.tensors, QuantizedTensors):
        return {}  # not needed: the upload holds the trained values
    if isinstance(payload, TableRows):
        start = {"tokens": shared.embedding["tokens"][payload.ids.long()]}
        if "positions" in shared.embedding:
            start["positions"] = shared.embedding["positions"]
        return start
    return shared.embedding


class Aggregator:
    def __init__(self, spec: VariantSpec, outer: OuterOptConfig, by_tokens: bool = True):
        self.spec = spec
        self.outer = outer
        self.by_tokens = by_tokens
        # The last round's body: ||Δ|| = ||θ − Σ w_k θ_k|| (the outer gradient) and ||θ|| after the step.
        self.stats: dict[str, float] = {}

    def apply(self, shared: SharedState, updates: list[WorkerUpdate],
              combine: Callable[[PartialSums], PartialSums] | None = None) -> None:
        """Aggregate a round. `updates` holds one entry per participant; an entry whose tensors stayed in another
        process (body None) still counts in the weights, and `combine` adds the other processes' sums."""
        if not updates:
            return
        if not self.spec.uses_outer_optimizer and len(updates) != 1:
            raise ValueError(f"a {self.spec.variant.value} round has one participant, got {len(updates)}")
        for u in updates:
            self._check(shared, u)
        weights = aggregation_weights(updates, self.by_tokens)  # a baseline's one update gets weight 1 either way
        partial = self.accumulate(shared, updates, weights)
        self.finish(shared, combine(partial) if combine else partial)

    def _check(self, shared: SharedState, u: WorkerUpdate) -> None:
        if u.body is None:
            return  # its tensors are summed in another process
        if set(u.body.keys()) != set(shared.body):
            raise ValueError(f"update from '{u.key}' has body tensors {sorted(set(u.body.keys()) ^ set(shared.body))} "
                             "that do not match the shared body")
        want = self.spec.payload_type
        got = type(u.embedding) if u.embedding is not None else None
        if got is not want:
            raise ValueError(f"update from '{u.key}' carries {got.__name__ if got else 'no embedding'}, "
                             f"{self.spec.variant.value} expects {want.__name__ if want else 'none'}")

    def accumulate(self, shared: SharedState, updates: list[WorkerUpdate], weights: list[float]) -> PartialSums:
        partial = PartialSums(_zeros(shared.body))
        held_rows = self.spec.has_global_embedding and self.spec.rows == Rows.HELD
        if self.spec.has_global_embedding:
            partial.table = _zeros(shared.embedding)
        if held_rows:
            partial.held_weight = torch.zeros(shared.embedding["tokens"].shape[0], dtype=torch.float32)
        for u, w in zip(updates, weights, strict=True):
            if u.body is None:
                continue
            for name, value in trained_values(u.body, shared.body).items():
                partial.body[name].add_(value.float(), alpha=w)
            if not self.spec.has_global_embedding:
                continue
            table = trained_values(u.embedding.tensors, _table_start(shared, u.embedding))
            if held_rows:
                ids = u.embedding.ids.long()
                partial.table["tokens"].index_add_(0, ids, table["tokens"].float(), alpha=w)
                partial.held_weight.index_add_(0, ids, torch.full((ids.numel(),), w))
                if "positions" in partial.table:  # every source holds every position: averaged like the body
                    partial.table["positions"].add_(table["positions"].float(), alpha=w)
            else:
                for name, value in table.items():
                    partial.table[name].add_(value.float(), alpha=w)
        return partial

    def finish(self, shared: SharedState, partial: PartialSums) -> None:
        delta = sum(float((shared.body[k].float() - v).pow(2).sum()) for k, v in partial.body.items())
        self._finish(shared, partial)
        self.stats = {"pseudo_grad_norm": delta ** 0.5,
                      "body_norm": sum(float(v.float().pow(2).sum()) for v in shared.body.values()) ** 0.5}

    def _finish(self, shared: SharedState, partial: PartialSums) -> None:
        if not self.spec.uses_outer_optimizer:  # STD/ACT: the one model, adopted as it is
            for name, value in partial.body.items():
                shared.body[name].copy_(value)
            for name, value in partial.table.items():
                shared.embedding[name].copy_(value)
            return
        for name, target in partial.body.items():
            self._outer_step(shared, f"body.{name}", shared.body[name], target)
        if not self.spec.has_global_embedding:
            return
        if partial.held_weight is None:
            for name, target in partial.table.items():
                self._outer_step(shared, f"embedding.{name}", shared.embedding[name], target)
            return
        held = torch.nonzero(partial.held_weight > 0).squeeze(1)
        target = torch.zeros_like(partial.table["tokens"])
        target[held] = partial.table["tokens"][held] / partial.held_weight[held].unsqueeze(1)
        self._outer_step(shared, "embedding.tokens", shared.embedding["tokens"], target, rows=held)
        if "positions" in partial.table:
            self._outer_step(shared, "embedding.positions", shared.embedding["positions"], partial.table["positions"])

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
