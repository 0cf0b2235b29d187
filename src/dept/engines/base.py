"""The engine protocol: run one round's workers and return their updates, with the bytes moved."""

from __future__ import annotations

from typing import Protocol

from dept.algorithm.types import RoundPlan, SharedState, WorkerUpdate


class Engine(Protocol):
    def run_round(self, plan: RoundPlan, shared: SharedState) -> list[WorkerUpdate]:
        """Train every source of `plan` from `shared` (not modified) and return one update per source,
        in plan order, each with `bytes_down` set to the bytes the engine handed that worker."""
        ...
