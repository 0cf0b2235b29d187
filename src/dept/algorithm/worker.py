"""A worker: N local AdamW steps of (a copy of the body, one source's embedding) on that source's stream.

The same worker trains every variant: the variant decides where the embedding comes from (the download for
GLOB/TRIM/STD/ACT, the source's own state for SPEC/SPEC-OPT) and what goes back in the `WorkerUpdate`. The STD and
ACT baselines run as a worker of the pseudo-source `mixture`, whose batches mix all sources with temperature τ.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dept.algorithm.runtime import autocast_context, seeded_generator
from dept.algorithm.schedule import learning_rate
from dept.algorithm.source_store import SourceState, SourceStore
from dept.algorithm.types import Download, RoundPlan, WorkerUpdate
from dept.algorithm.variants import MIXTURE, EmbeddingRule, VariantSpec
from dept.config import Config
from dept.data.prepared import GLOBAL, PreparedData
from dept.data.stream import MixtureStream, StreamPosition, WindowStream
from dept.model import Body, LanguageModel, SourceEmbedding


def own_embedding(vocab_size: int, cfg: Config, tensors: dict[str, torch.Tensor] | None,
                  source_index: int) -> SourceEmbedding:
    """A SPEC/SPEC-OPT source's table: as saved, or the seeded init it starts from the first time it is sampled."""
    emb = SourceEmbedding(vocab_size, cfg.model)
    if tensors:
        emb.load_tensors(tensors)
    else:
        emb.reset_parameters(seeded_generator(cfg.run.seed, 104729, source_index))
    return emb


class SourceData:
    """Everything about one source's data a worker needs, from the prepared folder."""

    def __init__(self, cfg: Config, spec: VariantSpec, data: PreparedData, name: str):
        self.cfg, self.spec, self.data, self.name = cfg, spec, data, name
        self.index = [s.name for s in cfg.data.sources].index(name) if name != MIXTURE else len(cfg.data.sources)

    @property
    def vocab(self) -> str:
        return self.spec.vocabulary

    def trim_ids(self) -> torch.Tensor:
        return torch.from_numpy(self.data.source(self.name).trim_vocab())

    def vocab_size(self) -> int:
        if self.spec.embedding == EmbeddingRule.ROWS:
            return int(self.trim_ids().numel())
        if self.vocab == GLOBAL or self.name == MIXTURE:
            return self.data.global_vocab_size
        return self.data.source(self.name).vocab_size(self.vocab)

    def window_stream(self, name: str, batch_size: int, trim: bool) -> WindowStream:
        src = self.data.source(name)
        id_map = None
        if trim:
            ids = src.trim_vocab()
            id_map = np.full(self.data.global_vocab_size, -1, dtype=np.int64)
            id_map[ids] = np.arange(ids.size)
        index = [s.name for s in self.cfg.data.sources].index(name)
        return WindowStream(src.tokens(self.vocab, "train"), self.cfg.train.seq_len, batch_size,
                            self.cfg.run.seed, index, name, id_map)

    def stream(self, positions: dict[str, StreamPosition], extra: dict):
        t = self.cfg.train
        if self.name != MIXTURE:
            stream = self.window_stream(self.name, t.batch_size, self.spec.embedding == EmbeddingRule.ROWS)
            stream.seek(positions.get(self.name, StreamPosition()))
            return stream
        names = [s.name for s in self.cfg.trained_sources]
        batch = t.std_batch_size or t.batch_size * self.cfg.sources_per_round
        streams = [self.window_stream(n, 1, trim=False) for n in names]
        for n, s in zip(names, streams, strict=True):
            s.seek(positions.get(n, StreamPosition()))
        counts = [self.data.source(n).n_tokens(GLOBAL, "train") for n in names]
        mix = MixtureStream(streams, MixtureStream.temperature_weights(counts, t.std_temperature), batch,
                            self.cfg.run.seed)
        mix.step = int(extra.get("mixture_step", 0))
        return mix


class Worker:
    def __init__(self, cfg: Config, spec: VariantSpec, data: PreparedData, store: SourceStore,
                 device: torch.device):
        self.cfg, self.spec, self.data, self.store, self.device = cfg, spec, data, store, device

    @property
    def _keeps_optimizer_state(self) -> bool:
        # STD/ACT are one continuous optimisation cut into rounds only for evaluation and checkpoints.
        return self.cfg.train.inner.keep_state or self.spec.baseline

    def build_embedding(self, source: SourceData, download: Download, state: SourceState | None) -> SourceEmbedding:
        if self.spec.embedding == EmbeddingRule.LOCAL:
            return own_embedding(source.vocab_size(), self.cfg, state.embedding if state else None, source.index)
        ids = source.trim_ids() if self.spec.embedding == EmbeddingRule.ROWS else None
        emb = SourceEmbedding(download.embedding["tokens"].shape[0], self.cfg.model, global_ids=ids)
        emb.load_tensors(download.embedding)
        return emb

    def run(self, plan: RoundPlan, name: str, download: Download) -> WorkerUpdate:
        t0 = time.perf_counter()
        cfg, tcfg = self.cfg, self.cfg.train
        source = SourceData(cfg, self.spec, self.data, name)
        state = self.store.load(name, plan.round)
        with self.device:  # built where it trains: on a GPU the throw-away random init costs nothing
            body = Body(cfg.model)
            embedding = self.build_embedding(source, download, state)
        body.load_state_dict(download.body)
        lm = LanguageModel(body, embedding)
        lm.train()
        inner = tcfg.inner
        optimizer = torch.optim.AdamW(list(lm.parameters()), lr=inner.lr, betas=inner.betas, eps=inner.eps,
                                      weight_decay=inner.weight_decay, fused=self.device.type == "cuda" or None)
        if self._keeps_optimizer_state and state is not None and state.optimizer is not None:
            optimizer.load_state_dict(state.optimizer)
        positions = state.streams if state else {}
        stream = source.stream(self._named_positions(source, positions), state.extra if state else {})
        reset_every = tcfg.act_reset_every or tcfg.local_steps
        losses: list[torch.Tensor] = []  # read once per round: no device sync per step
        tokens = 0
        for i in range(plan.local_steps):
            step = plan.first_step + i
            if self.spec.resets_embedding and step > 0 and step % reset_every == 0:
                self._forget_embedding(embedding, optimizer, step)
            lr = learning_rate(step, plan.total_steps, inner.lr, inner.warmup_steps, inner.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = stream.next_batch().to(self.device, non_blocking=True)
            with autocast_context(self.device, tcfg.precision):
                loss = lm.loss(batch)
            loss.backward()
            if inner.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(lm.parameters(), inner.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            tokens += batch.shape[0] * (batch.shape[1] - 1)

        self._save_state(name, plan, source, embedding, optimizer, stream, state)
        return self._update(plan, name, lm, embedding, tokens, torch.stack(losses).float().tolist(),
                            time.perf_counter() - t0)

    def _named_positions(self, source: SourceData, stored: dict[str, StreamPosition]) -> dict[str, StreamPosition]:
        if source.name != MIXTURE:
            return stored
        names = [s.name for s in self.cfg.trained_sources]
        return {names[int(k)]: v for k, v in stored.items()}

    def _forget_embedding(self, embedding: SourceEmbedding, optimizer: torch.optim.Optimizer, step: int) -> None:
        """ACT: re-initialise the embeddings and drop their optimizer moments."""
        with torch.no_grad():
            fresh = SourceEmbedding(embedding.vocab_size, self.cfg.model)
            fresh.reset_parameters(seeded_generator(self.cfg.run.seed, 15485863, step))
            embedding.load_state_dict(fresh.state_dict())
        for p in embedding.parameters():
            optimizer.state.pop(p, None)

    def _save_state(self, name: str, plan: RoundPlan, source: SourceData, embedding: SourceEmbedding,
                    optimizer: torch.optim.Optimizer, stream, previous: SourceState | None) -> None:
        new = SourceState(rounds_trained=(previous.rounds_trained if previous else 0) + 1)
        if self.spec.embedding == EmbeddingRule.LOCAL:
            new.embedding = embedding.tensors()
        if self._keeps_optimizer_state:
            new.optimizer = optimizer.state_dict()
        if isinstance(stream, MixtureStream):
            new.streams = {str(i): s.position for i, s in enumerate(stream.streams)}
            new.extra = {"mixture_step": stream.step}
        else:
            new.streams = {name: stream.position}
        self.store.save(name, plan.round, new)

    def _update(self, plan: RoundPlan, name: str, lm: LanguageModel, embedding: SourceEmbedding, tokens: int,
                losses: list[float], elapsed_s: float) -> WorkerUpdate:
        body = {k: v.detach().to("cpu", copy=True) for k, v in lm.body.state_dict().items()}
        update = WorkerUpdate(source=name, round=plan.round, body=body, tokens=tokens,
                              train_loss=float(np.mean(losses)), last_loss=losses[-1], elapsed_s=elapsed_s)
        if self.spec.embedding != EmbeddingRule.LOCAL:
            update.embedding = {k: v.detach().to("cpu", copy=True) for k, v in embedding.tensors().items()}
        if self.spec.embedding == EmbeddingRule.ROWS:
            update.row_ids = embedding.global_ids.to(torch.int32)
        return update
