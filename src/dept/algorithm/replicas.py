"""Data parallelism inside one participant: several processes train the same source (or STD's mixture) together.

An engine that runs a participant on R processes (torchrun with `train.ranks_per_source` R, or STD/ACT on every
rank) hands the worker a `Replicas` for it. Each replica reads its own equal share of every batch
(`batch_share`), the wrapped model averages the gradients across the replicas in the backward pass (DDP, or
FSDP with the model sharded across them), so every replica takes the same optimizer step; the round's losses and
statistics are averaged with `mean`, and what leaves the worker is gathered whole (`full`, `optimizer_state`).
Replica 0 saves the participant's state and reports its tensors; the others only train.
With no `Replicas` (one process per participant) nothing here is used and the worker runs as it always has.

The algorithm knows no process group: the engine implements this protocol (`dept.engines.torchrun`).
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch


class Replicas(Protocol):
    size: int  # processes that train this participant together
    index: int  # this process's place among them; 0 saves state and reports the update's tensors

    def wrap(self, model, eager) -> object:
        """An object with `model`'s `loss(windows)` whose backward averages gradients across the replicas,
        `no_sync()` (a context in which a backward only accumulates, for micro-batches before the last), and
        `eager`: the same for `eager` (the uncompiled model with the same parameters, for a hooked step)."""
        ...

    def full(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors whole, on the CPU: gathered where the model is sharded across the replicas (every replica
        calls it, in the same order)."""
        ...

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state whole, in the layout of an unsharded `state_dict()` (every replica calls it)."""
        ...

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load a whole state (as `optimizer_state` gives it) into the optimizer of a wrapped model."""
        ...

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of `values` over the replicas (every replica gets the same result)."""
        ...

    @property
    def moved_bytes(self) -> int:
        """Gradient bytes this process has handed to the all-reduce so far."""
        ...


def batch_share(replicas: Replicas | None) -> tuple[int, int] | None:
    """(index, size) of this replica's share of every batch; None: the whole batch."""
    return None if replicas is None else (replicas.index, replicas.size)


def no_sync(model):
    """The model's `no_sync()` where it has one (a data-parallel wrapper), else nothing to suspend."""
    method = getattr(model, "no_sync", None)
    return method() if method is not None else contextlib.nullcontext()
