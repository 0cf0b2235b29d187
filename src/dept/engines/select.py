"""Pick and build the engine a config asks for (`train.engine`)."""

from __future__ import annotations

from dept.algorithm.runtime import resolve_device
from dept.algorithm.variants import VariantSpec
from dept.config import Config
from dept.engines.base import Engine
from dept.engines.local import local_engine
from dept.errors import EngineError


def engine_kind(cfg: Config) -> str:
    if cfg.train.engine != "auto":
        return cfg.train.engine
    from dept.engines.torchrun import launched_by_torchrun

    return "torchrun" if launched_by_torchrun() else "local"


def build_engine(cfg: Config, spec: VariantSpec, check_inputs: bool = True) -> Engine:
    kind = engine_kind(cfg)
    if kind == "torchrun":
        import torch.distributed as dist

        from dept.algorithm.participants import round_participants
        from dept.engines.torchrun import Layout, TorchrunEngine, check_batch_shares, init_distributed

        device, created = init_distributed(cfg.train.device)
        rank, world = dist.get_rank(), dist.get_world_size()
        layout = Layout(world, cfg.train.ranks_per_source)
        participants = round_participants(cfg, spec)
        check_batch_shares(cfg, layout, participants)
        served = [p for p in participants if rank in layout.members(p)]
        owned = sorted({name for p in served for name in getattr(p, "sources", (p.key,))})
        local = local_engine(cfg, spec, device, check_inputs=check_inputs and rank == 0, sources=owned)
        return TorchrunEngine(local, device, owns_group=created, per_source=cfg.train.ranks_per_source,
                              data_parallel=cfg.train.data_parallel)
    if kind == "flower":
        raise EngineError("train.engine=flower runs the round loop inside Flower's ServerApp: use "
                          "`dept train` (dept.training.run_training), not a Trainer with a built engine")
    return local_engine(cfg, spec, resolve_device(cfg.train.device), check_inputs)
