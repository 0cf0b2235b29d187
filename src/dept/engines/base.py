"""The engine protocol: deliver what the coordinator configured to the workers, and bring their replies back.

An engine decides nothing about the method: the coordinator (`dept.algorithm.coordinator`) says what each
participant receives and combines the replies. An engine reports, per assignment, the bytes it really moved.

Optional members, for engines whose processes share the round loop (torchrun), with their default when absent:
- `writes_run_folder: bool` (True): whether this process writes metrics, checkpoints and results;
- `barrier() -> None` (nothing): wait for every process (after the writer has set up the run folder);
- `combine(partial: PartialSums) -> PartialSums` (identity): sum the aggregator's partial sums across processes,
  for updates returned as receipts (`WorkerUpdate.receipt()`: no tensors, summed where they were trained);
- `traffic() -> dict` (none): what the engine really moved in the last round, written into the round's metrics.
"""

from __future__ import annotations

from typing import Protocol

from dept.algorithm.types import Assignment, EvalAssignment, Participant, SourceEval, SourceProfile, WorkerUpdate


class Engine(Protocol):
    def profiles(self, participants: list[Participant]) -> list[SourceProfile]:
        """Ask each participant's worker for its profile (the shape of its table), once, before round 0."""
        ...

    def run_round(self, assignments: list[Assignment]) -> list[WorkerUpdate]:
        """Deliver each assignment to the worker of its participant; return one update per assignment, in
        order, each with `moved` set to the bytes the engine carried down and up for it."""
        ...

    def evaluate(self, assignments: list[EvalAssignment]) -> list[SourceEval]:
        """Evaluate each source where its data lives; one result per assignment, in order."""
        ...
