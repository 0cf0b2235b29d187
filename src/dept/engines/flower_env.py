"""Flower, offline and optional: its switches set before `flwr` is imported, and a clear error without it."""

from __future__ import annotations

import importlib.util
import os

from dept.errors import EngineError

# Telemetry, the update check and Ray's usage stats would reach the network; runtime dependency installation would
# run `uv sync` and could replace the installed torch. A user's own setting of any of them is kept.
OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}


def quiet_flower() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    if importlib.util.find_spec("flwr") is None:
        raise EngineError("train.engine=flower needs Flower: pip install 'dept[flower]'")
