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

        from dept.engines.torchrun import TorchrunEngine, init_distributed, owner_rank

        device, created = init_distributed(cfg.train.device)
        rank, world = dist.get_rank(), dist.get_world_size()
        owned = [s.name for i, s in enumerate(cfg.data.sources) if owner_rank(i, world) == rank]
        local = local_engine(cfg, spec, device, check_inputs=check_inputs and rank == 0, sources=owned)
        return TorchrunEngine(local, device, owns_group=created)
    if kind == "flower":
        raise EngineError("train.engine=flower runs the round loop inside Flower's ServerApp: use "
                          "`dept train` (dept.training.run_training), not a Trainer with a built engine")
    return local_engine(cfg, spec, resolve_device(cfg.train.device), check_inputs)
