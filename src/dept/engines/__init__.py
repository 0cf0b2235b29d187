"""Engines move `Download`s and `WorkerUpdate`s between the aggregator and workers; they never train."""

from dept.engines.base import Engine
from dept.engines.local import LocalEngine

__all__ = ["Engine", "LocalEngine"]
