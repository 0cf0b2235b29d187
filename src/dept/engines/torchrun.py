"""The torch.distributed engine: one process per rank (launched by torchrun, SLURM, Ray Train, ...).

    torchrun --standalone --nproc_per_node=2 -m dept train configs/demo.yaml            # one machine, 2 ranks
    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=$NODE \\
             --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m dept train CONFIG            # on each of 2 nodes

Every rank runs the same round loop. The world is split into groups of `train.ranks_per_source` consecutive
ranks (`Layout`); source k belongs to group k mod groups for the whole run (with 1 rank per source: rank k mod
world size). In a round each group trains the sampled sources it owns, one after another (several, or none); inside
a group the ranks are data-parallel replicas (`dept.engines.data_parallel`: DDP, or FSDP2 with
`train.data_parallel=fsdp`), each reading its own share of every batch, gradients averaged at every step. Only the
group's ranks read the source's private state (its table, tokenizer, AdamW state, stream position), and only the
group's first rank writes it and reports the update. The STD/ACT baselines train their one model on every rank
the same way, each rank a share of every mixed batch: real data-parallel training, whose per-step gradient bytes
the rounds' `engine.grad_all_reduce_bytes` count rank by rank. The updates are combined
with collectives: every rank forms the token-weighted sums of its own updates (`aggregator.PartialSums`: body, and
GLOB's table or TRIM's rows with their holder weights), one all-reduce adds them, and every rank takes the same
outer step, so all ranks hold the same body after each round. Only scalars (tokens, losses) are gathered as
objects. Rank 0 writes the run folder (metrics, checkpoints, results); `--resume` works as on one process.

With `train.compression` each rank's workers compress their uploads exactly as a remote site would (the same
quantised pseudo-gradients, the same error feedback, so the run equals the local engine's bitwise), and the rank
turns them back into θ_k where they were trained before summing. The all-reduce itself stays one fp32 buffer of
weighted sums: sums of differently scaled int8 values have no int8 form, and a bf16 all-reduce would round the
sums again, without error feedback, and differently for each number of ranks. So compression saves no bytes on
torchrun's collective (`all_reduce_bytes` is unchanged); the rounds' `bytes_up` count the compressed updates the
workers handed over, which is what a real network hop (Flower) carries.

Backends: gloo on CPU, NCCL on GPUs (one GPU per rank, `LOCAL_RANK`). A process group that is already initialised
(SLURM, Ray Train) is used as it is.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from dept.algorithm.aggregator import PartialSums
from dept.algorithm.types import (
    Assignment,
    EvalAssignment,
    Participant,
    Source,
    SourceEval,
    SourceProfile,
    WorkerUpdate,
)
from dept.config import Config
from dept.engines.data_parallel import GroupReplicas
from dept.engines.local import LocalEngine
from dept.errors import EngineError


def launched_by_torchrun() -> bool:
    """True inside torchrun (or any launcher that set RANK/WORLD_SIZE), or when a process group already exists."""
    if not dist.is_available():
        return False
    return dist.is_initialized() or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def init_distributed(device_name: str, timeout_s: int = 1800) -> tuple[torch.device, bool]:
    """Join (or reuse) the process group; return this rank's device and whether the group was created here."""
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank) if device_name in ("auto", "cuda") else torch.device(device_name)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if dist.is_initialized():
        return device, False
    unset = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if unset:  # env:// rendezvous would raise on the first one
        raise EngineError(f"train.engine=torchrun, but this process was not launched by torchrun ({', '.join(unset)} "
                          "not set): start it with `torchrun ... -m dept train`, or use train.engine=auto")
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return device, True


@dataclass(frozen=True)
class Layout:
    """Which ranks train which participant: the world in groups of `per_source` consecutive ranks; source k
    belongs to group k mod groups for the whole run, and the group's first rank (its leader) saves the source's
    state, evaluates it and reports its update. STD/ACT's one model trains on every rank (leader: rank 0)."""

    world: int
    per_source: int = 1

    def __post_init__(self) -> None:
        if self.per_source > self.world or self.world % self.per_source:
            raise EngineError(f"train.ranks_per_source={self.per_source} does not divide the {self.world} ranks "
                              "into equal groups")

    @property
    def groups(self) -> int:
        return self.world // self.per_source

    def group_ranks(self, group: int) -> list[int]:
        return list(range(group * self.per_source, (group + 1) * self.per_source))

    def members(self, participant: Participant) -> list[int]:
        if isinstance(participant, Source):
            return self.group_ranks(participant.index % self.groups)
        return list(range(self.world))

    def leader(self, participant: Participant) -> int:
        return self.members(participant)[0]


def check_batch_shares(cfg: Config, layout: Layout, participants: list[Participant]) -> None:
    """Replicas take equal shares of each batch (DDP averages their gradients with equal weights)."""
    for p in participants:
        replicas = len(layout.members(p))
        source = isinstance(p, Source)
        batch = cfg.train.batch_size if source else cfg.std_batch_size
        if replicas > 1 and batch % replicas:
            key = "train.batch_size" if source else "train.std_batch_size (or batch_size × sources_per_round)"
            raise EngineError(f"{key} = {batch} does not split into equal shares for the {replicas} ranks that "
                              f"train {'each source' if source else 'the one model'}")


class TorchrunEngine:
    def __init__(self, local: LocalEngine, device: torch.device, owns_group: bool = False, per_source: int = 1,
                 data_parallel: str = "ddp"):
        self.local, self.device, self._owns_group = local, device, owns_group
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.layout = Layout(self.world, per_source)
        self.data_parallel = data_parallel  # ddp or fsdp, for participants trained by several ranks
        self.writes_run_folder = self.rank == 0
        self._traffic: dict = {}
        # every rank creates every group, in the same order (new_group is collective)
        self._groups = {g: dist.new_group(self.layout.group_ranks(g)) for g in range(self.layout.groups)} \
            if per_source > 1 else {}
        self._replicas: dict[tuple[int, ...], GroupReplicas] = {}
        local.worker.replicas = self.replicas

    def owner(self, participant: Participant) -> int:
        return self.layout.leader(participant)

    def replicas(self, participant: Participant) -> GroupReplicas | None:
        """The replicas that train `participant` with this rank (None: this rank alone)."""
        ranks = self.layout.members(participant)
        if len(ranks) == 1:
            return None
        key = tuple(ranks)
        if key not in self._replicas:
            group = dist.group.WORLD if len(ranks) == self.world else self._groups[ranks[0] // self.layout.per_source]
            self._replicas[key] = GroupReplicas(group, ranks, self.rank, self.device, self.data_parallel)
        return self._replicas[key]

    def _replica_bytes(self) -> int:
        return sum(r.moved_bytes for r in self._replicas.values())

    def _gather(self, mine: list) -> list:
        """Every rank's list, on every rank, concatenated in rank order."""
        out: list[list] = [None] * self.world  # type: ignore[list-item]
        dist.all_gather_object(out, mine)
        self._traffic["gathered_objects"] = self._traffic.get("gathered_objects", 0) + 1
        return [x for part in out for x in part]

    def barrier(self) -> None:
        dist.barrier()

    def profiles(self, participants: list[Participant]) -> list[SourceProfile]:
        mine = [p for p in participants if self.owner(p) == self.rank]
        found = {p.participant.key: p for p in self._gather(self.local.profiles(mine))}
        return [found[p.key] for p in participants]

    def run_round(self, assignments: list[Assignment]) -> list[WorkerUpdate]:
        """Each rank trains the sampled participants its group owns (with the group's other ranks as replicas);
        the leaders' updates keep their tensors for the partial sums, everyone else learns of them as receipts."""
        self._traffic = {"all_reduce_bytes": 0, "gathered_objects": 0, "reduce_s": 0.0, "gather_s": 0.0}
        before = self._replica_bytes()
        mine = [a for a in assignments if self.rank in self.layout.members(a.participant)]
        own = {u.key: u for u in self.local.run_round(mine) if self.owner(u.participant) == self.rank}
        t0 = time.perf_counter()
        receipts = {u.key: u for u in self._gather([u.receipt() for u in own.values()])}
        self._traffic["gather_s"] = time.perf_counter() - t0  # mostly waiting for the slowest rank
        if self.layout.per_source > 1 or any(len(self.layout.members(a.participant)) > 1 for a in assignments):
            # gradient bytes each rank handed to its in-step all-reduces this round (DDP buckets, fp32)
            self._traffic["grad_all_reduce_bytes"] = self._gather([self._replica_bytes() - before])
            self._traffic["ranks_per_source"] = self.layout.per_source
        return [own.get(a.participant.key) or receipts[a.participant.key] for a in assignments]

    def combine(self, partial: PartialSums) -> PartialSums:
        """Sum every rank's partial sums with one all-reduce of one flat fp32 buffer."""
        t0 = time.perf_counter()
        tensors = partial.tensors()
        flat = torch.cat([t.reshape(-1) for t in tensors.values()]).to(self.device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        moved = flat.numel() * flat.element_size()
        self._traffic["all_reduce_bytes"] = self._traffic.get("all_reduce_bytes", 0) + moved
        flat = flat.cpu()
        offset = 0
        for t in tensors.values():
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        self._traffic["reduce_s"] = self._traffic.get("reduce_s", 0.0) + time.perf_counter() - t0
        return partial

    def traffic(self) -> dict:
        """What this rank really moved in the last round: the all-reduce payload (each rank's buffer; a ring
        all-reduce sends and receives 2·(P−1)/P of it per rank) and the number of object gathers (scalars)."""
        return {"engine": "torchrun", "world_size": self.world, **self._traffic}

    def close(self) -> None:
        """Leave the process group (only one this engine created), all ranks together: a rank tearing its
        group down while another still writes can abort it."""
        if self._owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def evaluate(self, assignments: list[EvalAssignment]) -> list[SourceEval]:
        mine = [a for a in assignments if self.owner(a.source) == self.rank]
        found = {r.source: r for r in self._gather(self.local.evaluate(mine))}
        return [found[a.source.name] for a in assignments]
