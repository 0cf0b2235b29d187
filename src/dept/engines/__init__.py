"""Engines move `Assignment`s to workers and `WorkerUpdate`s back (and evaluation likewise); they decide nothing."""

from dept.engines.base import Engine
from dept.engines.local import LocalEngine

__all__ = ["Engine", "LocalEngine"]
