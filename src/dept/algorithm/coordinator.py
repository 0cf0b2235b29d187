"""The algorithm's side of the seam: what each participant receives per round, and how replies are combined.

Like a Flower strategy, it configures work and aggregates results while knowing nothing of how they travel:

    assignments = coordinator.configure_round(plan, shared)     # [Assignment(participant, plan, download)]
    updates = engine.run_round(assignments)                      # the engine only moves them
    coordinator.aggregate(shared, updates)                       # outer step, GLOB/TRIM/SPEC rules

It holds each participant's `SourceProfile` (its table's shape and, for TRIM/SPEC, its V_k), which the workers
report once at the start; it never reads a source's text.
"""

from __future__ import annotations

from collections.abc import Callable

from dept.algorithm.aggregator import Aggregator, PartialSums
from dept.algorithm.sampling import sample_sources
from dept.algorithm.types import (
    Assignment,
    EvalAssignment,
    Mixture,
    Participant,
    RoundPlan,
    SharedState,
    Source,
    SourceProfile,
    WorkerUpdate,
)
from dept.algorithm.variants import VariantSpec
from dept.config import Config


class Coordinator:
    def __init__(self, cfg: Config, spec: VariantSpec, profiles: list[SourceProfile]):
        self.cfg, self.spec = cfg, spec
        self.profiles = {p.participant.key: p for p in profiles}
        self.sources = [p.participant for p in profiles if isinstance(p.participant, Source)]
        mixtures = [p.participant for p in profiles if isinstance(p.participant, Mixture)]
        if spec.baseline and len(mixtures) != 1:
            raise ValueError(f"{spec.variant.value} trains one mixture participant; profiles hold {len(mixtures)}")
        self.mixture = mixtures[0] if mixtures else None
        self.aggregator = Aggregator(spec, cfg.train.outer, by_tokens=cfg.train.aggregation == "tokens")
        # participant key -> the last round whose update was aggregated (saved in checkpoints)
        self.last_round: dict[str, int] = {}

    @property
    def trained(self) -> list[Source]:
        return [s for s in self.sources if not self.profiles[s.key].unseen]

    @property
    def total_steps(self) -> int:
        return self.cfg.train.rounds * self.cfg.train.local_steps

    def participants(self, round_index: int) -> tuple[Participant, ...]:
        if self.mixture is not None:
            return (self.mixture,)
        names = [s.name for s in self.trained]
        picked = set(sample_sources(names, self.cfg.sources_per_round, self.cfg.run.seed, round_index))
        return tuple(s for s in self.trained if s.name in picked)

    def plan(self, round_index: int, keep_from_round: int = 0) -> RoundPlan:
        n = self.cfg.train.local_steps
        return RoundPlan(round_index, self.participants(round_index), round_index * n, n, self.total_steps,
                         keep_from_round)

    def profile(self, participant: Participant) -> SourceProfile:
        return self.profiles[participant.key]

    def configure_round(self, plan: RoundPlan, shared: SharedState) -> list[Assignment]:
        return [Assignment(p, plan, self.spec.download(shared, self.profile(p)), self.last_round.get(p.key))
                for p in plan.participants]

    def aggregate(self, shared: SharedState, updates: list[WorkerUpdate],
                  combine: Callable[[PartialSums], PartialSums] | None = None) -> None:
        """Outer step from the round's updates; `combine` sums partial sums across processes (torchrun)."""
        self.aggregator.apply(shared, updates, combine)
        for u in updates:
            self.last_round[u.key] = u.round

    def configure_evaluation(self, shared: SharedState) -> list[EvalAssignment]:
        """Every source, trained and unseen, with the body and the table the variant evaluates it with."""
        return [EvalAssignment(s, shared.body, self.spec.eval_table(shared, self.profiles[s.key]),
                               self.last_round.get(s.key)) for s in self.sources]
