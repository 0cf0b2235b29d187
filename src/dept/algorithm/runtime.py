"""Where and how tensors are computed: seeded generators, the device, mixed precision."""

from __future__ import annotations

import contextlib

import numpy as np
import torch


def seeded_generator(*parts: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """The device `train.device` names, or a one-line error when this machine has none such."""
    from dept.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device={name}: not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={name}: no CUDA device here (torch {torch.__version__}"
                              f"{', built without CUDA' if torch.version.cuda is None else ''}); use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name}: MPS is not available here; use cpu or auto")
    elif device.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ConfigError(f"train.device={name}: no XPU device here; use cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"train.device={name}: dept trains on cpu, cuda, mps or xpu")
    return device


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(threads: int) -> None:
    """`train.threads`: 0 leaves torch's default; more than this machine's cores is refused (oversubscribed
    threads only slow every step down)."""
    from dept.errors import ConfigError

    if threads > usable_cores():
        raise ConfigError(f"train.threads={threads}: this machine gives this process {usable_cores()} CPU cores")
    if threads:
        torch.set_num_threads(threads)
