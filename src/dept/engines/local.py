"""The default engine: every sampled source trains in this process, one after another."""

from __future__ import annotations

import torch

from dept.algorithm.exchange import download_for
from dept.algorithm.types import RoundPlan, SharedState, WorkerUpdate
from dept.algorithm.variants import MIXTURE, EmbeddingRule
from dept.algorithm.worker import Worker


class LocalEngine:
    def __init__(self, worker: Worker):
        self.worker = worker

    def run_round(self, plan: RoundPlan, shared: SharedState) -> list[WorkerUpdate]:
        spec = self.worker.spec
        updates = []
        for name in plan.sources:
            trim_ids = None
            if spec.embedding == EmbeddingRule.ROWS and name != MIXTURE:
                trim_ids = torch.from_numpy(self.worker.data.source(name).trim_vocab())
            download = download_for(spec, shared, trim_ids)
            update = self.worker.run(plan, name, download)
            update.bytes_down = download.nbytes
            updates.append(update)
        return updates
