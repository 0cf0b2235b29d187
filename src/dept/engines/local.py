"""The default engine: every participant trains in this process, one after another; nothing is serialised."""

from __future__ import annotations

import torch

from dept import failpoints
from dept.algorithm.participants import LocalData
from dept.algorithm.source_store import SourceStore
from dept.algorithm.types import (
    Assignment,
    EvalAssignment,
    Participant,
    SourceEval,
    SourceProfile,
    Transfer,
    WorkerUpdate,
)
from dept.algorithm.variants import VariantSpec
from dept.algorithm.worker import Worker
from dept.config import Config
from dept.data.prepare import check_prepared
from dept.data.prepared import PreparedData
from dept.eval.validation import SourceEvaluator


class LocalEngine:
    def __init__(self, data: LocalData, worker: Worker, evaluator: SourceEvaluator):
        self.data, self.worker, self.evaluator = data, worker, evaluator

    def profiles(self, participants: list[Participant]) -> list[SourceProfile]:
        return [self.data.profile(p) for p in participants]

    def run_round(self, assignments: list[Assignment]) -> list[WorkerUpdate]:
        updates = []
        for a in assignments:
            update = self.worker.train(a)
            update.moved = Transfer(down=a.download.nbytes, up=update.nbytes)  # the tensors handed over
            updates.append(update)
        return updates

    def evaluate(self, assignments: list[EvalAssignment]) -> list[SourceEval]:
        results = []
        for a in assignments:
            results.append(self.evaluator.evaluate(a))
            failpoints.reached("eval")
        return results


def local_engine(cfg: Config, spec: VariantSpec, device: torch.device, check_inputs: bool = True,
                 sources: list[str] | None = None) -> LocalEngine:
    """Workers and evaluators over the prepared folder, source state in RUN/sources.

    `check_inputs` refuses prepared data that no longer matches the raw corpus (training); evaluation needs the
    prepared folder only and passes False. `sources`: the sources this process serves (default all).
    """
    if check_inputs:
        check_prepared(cfg)
    data = LocalData(cfg, spec, PreparedData(cfg.data_dir))
    data.check_streams(sources)
    store = SourceStore(cfg.run_dir / "sources")
    return LocalEngine(data, Worker(cfg, spec, data, store, device), SourceEvaluator(cfg, spec, data, store, device))
