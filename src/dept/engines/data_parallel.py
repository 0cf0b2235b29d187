"""Replicas over a torch.distributed process group: the ranks of a group train one participant together.

`GroupReplicas` implements `dept.algorithm.replicas.Replicas` in two ways (`train.data_parallel`):

- "ddp": `DistributedDataParallel`. Every rank holds the whole model, its gradients and AdamW state; each backward
  all-reduces the gradients in buckets, overlapped with the backward. A comm hook counts the bytes of every bucket
  handed to the all-reduce (`moved_bytes`).
- "fsdp": FSDP2 `fully_shard`, one unit per transformer block and one for the rest (the table and the final norm).
  Parameters, gradients and AdamW state are sharded across the group: a rank holds 1/R of them, and gathers one
  block at a time for its forward and backward. For a body that does not fit one device; it runs the eager step
  (`train.speed` does not apply). `moved_bytes` counts the
  gradient bytes handed to the reduce-scatter of each synchronised backward (the whole model's gradients, fp32).

What leaves the worker is always whole: `full` gathers sharded tensors, `optimizer_state` gathers the AdamW state
into the same layout as an unsharded optimizer's `state_dict()` (integer parameter ids) and `load_optimizer_state`
shards such a state again. So a source's saved state is the same file whatever the layout, a run resumed with
another `ranks_per_source` or `data_parallel` reads it, and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel


class _LossModule(nn.Module):
    """A model's `loss(windows)` as `forward`, so the wrapper sees the pass (its compiled or its eager path)."""

    def __init__(self, fast: nn.Module, eager: nn.Module):
        super().__init__()
        self.fast, self.eager = fast, eager  # the same parameters (each counted once)

    def forward(self, windows: torch.Tensor, eager: bool = False) -> torch.Tensor:
        return (self.eager if eager else self.fast).loss(windows)


class _ReplicatedLoss:
    """What the worker trains through: `loss`, `no_sync` (accumulate without communicating) and `eager`."""

    def __init__(self, replicas: GroupReplicas, root: nn.Module, eager: bool = False):
        self._replicas, self._root, self._eager = replicas, root, eager
        self._syncing = True

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        if self._replicas.kind == "fsdp" and self._syncing:  # this pass's backward reduce-scatters every gradient
            self._replicas.count(sum(p.numel() * 4 for p in self._root.parameters()))
        return self._root(windows, eager=self._eager)

    @contextlib.contextmanager
    def no_sync(self):
        if self._replicas.kind == "ddp":
            with self._root.no_sync():
                yield
            return
        self._root.set_requires_gradient_sync(False)
        self._syncing = False
        try:
            yield
        finally:
            self._root.set_requires_gradient_sync(True)
            self._syncing = True

    @property
    def eager(self) -> _ReplicatedLoss:
        return _ReplicatedLoss(self._replicas, self._root, eager=True)


def _is_sharded(t: torch.Tensor) -> bool:
    return hasattr(t, "full_tensor")  # a DTensor


class GroupReplicas:
    def __init__(self, group, ranks: list[int], rank: int, device: torch.device, kind: str = "ddp"):
        self.group, self.size, self.index, self.device, self.kind = group, len(ranks), ranks.index(rank), device, kind
        self._moved = 0
        self._mesh = None

    @property
    def moved_bytes(self) -> int:
        return self._moved

    def count(self, nbytes: int) -> None:
        self._moved += nbytes

    def wrap(self, model: nn.Module, eager: nn.Module) -> _ReplicatedLoss:
        if self.kind == "fsdp":  # the eager step: torch.compile of a body sharded after compiling is not checked
            return _ReplicatedLoss(self, self._shard(_LossModule(eager, eager), eager))
        root = _LossModule(model, eager)
        ddp = DistributedDataParallel(root, process_group=self.group,
                                      device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                      broadcast_buffers=False, init_sync=False)  # the replicas start equal

        def counted_allreduce(group, bucket):
            buffer = bucket.buffer()
            self._moved += buffer.numel() * buffer.element_size()
            return default_hooks.allreduce_hook(group, bucket)

        ddp.register_comm_hook(self.group, counted_allreduce)
        return _ReplicatedLoss(self, ddp)

    def _shard(self, root: nn.Module, lm: nn.Module) -> nn.Module:
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import fully_shard

        if self._mesh is None:
            self._mesh = DeviceMesh.from_group(self.group, self.device.type)
        for block in lm.body.blocks:  # one block gathered at a time
            fully_shard(block, mesh=self._mesh)
        return fully_shard(root, mesh=self._mesh)  # the rest: the table (tied head) and the final norm

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        out = values.detach().to(self.device, dtype=torch.float32, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return (out / self.size).cpu()

    def full(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole tensors on the CPU (a collective for sharded ones: every replica calls it, in the same order)."""
        return {k: (v.full_tensor() if _is_sharded(v) else v).detach().to("cpu", copy=True)
                for k, v in tensors.items()}

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        state = optimizer.state_dict()
        if self.kind != "fsdp":
            return state
        # Gathered in one order on every replica (a state loaded from a file lists its entries in an order of
        # that process's own), each copied out at once (a gathered tensor is waited for only when first read).
        return {"state": {i: {k: s[k].full_tensor().to("cpu", copy=True) if _is_sharded(s[k]) else s[k]
                              for k in sorted(s)}
                          for i, s in sorted(state["state"].items())},
                "param_groups": state["param_groups"]}

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        if self.kind != "fsdp":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.tensor import distribute_tensor

        params = [p for group in optimizer.param_groups for p in group["params"]]
        sharded = {}
        for i, s in state["state"].items():
            p = params[int(i)]
            sharded[i] = {k: distribute_tensor(v.to(self.device), p.device_mesh, p.placements, src_data_rank=None)
                          if isinstance(v, torch.Tensor) and v.shape == p.shape else v for k, v in s.items()}
        optimizer.load_state_dict({"state": sharded, "param_groups": state["param_groups"]})
