"""A worker: N local AdamW steps of (a copy of the body, one participant's table) on that participant's stream.

The same worker trains every variant; the variant table decides where the table comes from (the download for
GLOB/TRIM/STD/ACT, the source's own saved state for SPEC/SPEC-OPT), how many rows it has, and what goes back in
the `WorkerUpdate`. The STD/ACT baselines run as the `Mixture` participant, whose batches mix all trained sources
with temperature τ. With `train.compression` the update carries the pseudo-gradient θ_start − θ_k (and the
table's) quantised, and the source's state keeps the rounding residual for its next upload (error feedback).

ACT (active forgetting, Chen et al. 2023) re-initialises the token (and learned position) embeddings every
`act_reset_every` steps and drops their AdamW moments; the fresh embeddings follow the same global cosine schedule
as the body, without a warm-up of their own. Active forgetting resets the embedding layer while the rest of
training (optimizer, schedule) runs on, which is what makes the body, not the embeddings, carry what is learned.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from dept import failpoints
from dept.algorithm.compression import upload_compression
from dept.algorithm.participants import LocalData
from dept.algorithm.replicas import Replicas, batch_share
from dept.algorithm.runtime import seeded_generator
from dept.algorithm.schedule import learning_rate
from dept.algorithm.source_store import SourceState, SourceStore
from dept.algorithm.speed import optimizer_kwargs, resolve_mode, speed_up
from dept.algorithm.step import build_optimizer, set_learning_rate, train_step
from dept.algorithm.tables import own_embedding, received_embedding
from dept.algorithm.types import Assignment, Mixture, Participant, SourceProfile, WorkerUpdate
from dept.algorithm.variants import VariantSpec
from dept.config import Config
from dept.data.stream import MixtureStream
from dept.model import Body, LanguageModel, SourceEmbedding

# What each update reports of its round's training health (the paper's Figure 2, in small):
#   grad_norm / grad_norm_max   global gradient norm before clipping, mean and max over the local steps
#   activation_norm             mean L2 norm per token of the last block's output, on the round's last batch
#   local_update_norm           ||θ_start − θ_k||: how far the body moved in the round (the source's pseudo-gradient)
TRAINING_STATS = ("grad_norm", "grad_norm_max", "activation_norm", "local_update_norm")


def _activation_norm(out: list[torch.Tensor]):
    def hook(_module, _inputs, output: torch.Tensor) -> None:
        out.append(output.detach().float().norm(dim=-1).mean().cpu())
    return hook


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    total = sum(float((a[k].detach().float().cpu() - b[k].float()).pow(2).sum()) for k in b)
    return total ** 0.5


def _nonfinite(losses: list[float], tensors: dict[str, torch.Tensor]) -> str:
    """What in a round's outcome is NaN or infinite ("" where nothing is): the first such loss, or the tensors."""
    for i, loss in enumerate(losses):
        if not np.isfinite(loss):
            return f"loss {loss} at local step {i + 1} of {len(losses)}"
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    return f"non-finite values in {', '.join(bad[:3])}" + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") \
        if bad else ""


class Worker:
    def __init__(self, cfg: Config, spec: VariantSpec, data: LocalData, store: SourceStore, device: torch.device):
        self.cfg, self.spec, self.data, self.store, self.device = cfg, spec, data, store, device
        self.compression = upload_compression(cfg.train, spec.compresses_upload)  # None: sent as trained
        # "auto" counts the steps this process may run: compiling pays off only over many
        self.speed = resolve_mode(cfg.train.speed, device, cfg.train.rounds * cfg.train.local_steps)
        self.progress = None  # a log function: a line every `progress_every_s` inside a long round
        self.progress_every_s = 15.0
        # participant -> the `Replicas` training it with this process (None: this process alone); set by an
        # engine that trains one participant on several processes (see `dept.algorithm.replicas`)
        self.replicas: Callable[[Participant], Replicas | None] | None = None

    @property
    def _keeps_optimizer_state(self) -> bool:
        # STD/ACT are one continuous optimisation cut into rounds only for evaluation and checkpoints.
        return self.cfg.train.inner.keep_state or self.spec.baseline

    def build_embedding(self, profile: SourceProfile, assignment: Assignment,
                        state: SourceState | None) -> SourceEmbedding:
        if self.spec.has_global_embedding:
            return received_embedding(profile, self.cfg.model, assignment.download.embedding)
        return own_embedding(profile, self.cfg.model, self.cfg.run.seed, state.embedding if state else None)

    def train(self, assignment: Assignment) -> WorkerUpdate:
        t0 = time.perf_counter()
        cfg, tcfg, plan = self.cfg, self.cfg.train, assignment.plan
        participant = assignment.participant
        replicas = self.replicas(participant) if self.replicas is not None else None
        reports = replicas is None or replicas.index == 0  # saves the state, sends the tensors
        share = batch_share(replicas)
        profile = self.data.profile(participant)
        state = self.store.load_after(participant.key, assignment.state_round)
        with self.device:  # built where it trains: on a GPU the throw-away random init costs nothing
            body = Body(cfg.model)
            embedding = self.build_embedding(profile, assignment, state)
        body.load_state_dict(assignment.download.body)
        body.checkpoint_blocks = tcfg.activation_checkpointing
        lm = LanguageModel(body, embedding)
        lm.train()
        fast = speed_up(lm, self.speed, self.device)  # lm itself, or a faster view of its parameters
        eager = lm
        if replicas is not None:  # gradients averaged across the replicas in each backward
            fast = replicas.wrap(fast, lm)
            eager = fast.eager
        optimizer = build_optimizer(lm.parameters(), tcfg.inner, self.device,
                                    **optimizer_kwargs(self.device, self.speed))
        if self._keeps_optimizer_state and state is not None and state.optimizer is not None:
            if replicas is None:
                optimizer.load_state_dict(state.optimizer)
            else:
                replicas.load_optimizer_state(optimizer, state.optimizer)
        stream = self.data.train_stream(profile, state.streams if state else {},
                                        int(state.extra.get("mixture_step", 0)) if state else 0)
        reset_every = tcfg.act_reset_every or tcfg.local_steps
        losses: list[torch.Tensor] = []  # read once per round: no device sync per step
        grad_norms: list[torch.Tensor] = []
        activation: list[torch.Tensor] = []
        tokens = 0
        t_steps = last_line = time.perf_counter()
        for i in range(plan.local_steps):
            step = plan.first_step + i
            if self.spec.resets_embedding and step > 0 and step % reset_every == 0:
                self._forget_embedding(embedding, optimizer, step)
            set_learning_rate(optimizer, learning_rate(step, plan.total_steps, tcfg.inner.lr,
                                                       tcfg.inner.warmup_steps, tcfg.inner.min_lr_ratio))
            batch = stream.next_batch(share).to(self.device, non_blocking=True)
            hook = body.blocks[-1].register_forward_hook(_activation_norm(activation)) \
                if i == plan.local_steps - 1 else None
            # compiled code ignores hooks added after it was compiled: the hooked (last) step runs eagerly
            losses.append(train_step(eager if hook is not None else fast, optimizer, batch, tcfg.inner.grad_clip,
                                     tcfg.precision, grad_norms, tcfg.micro_batch_size))
            if hook is not None:
                hook.remove()
            failpoints.reached("step")
            tokens += stream.batch_size * (batch.shape[1] - 1)  # the whole batch's, whatever share read here
            if self.progress is not None and i + 1 < plan.local_steps and \
                    time.perf_counter() - last_line >= self.progress_every_s:
                last_line = now = time.perf_counter()
                left = (plan.local_steps - i - 1) * (now - t_steps) / (i + 1)
                self.progress(f"  {participant.key}: step {i + 1}/{plan.local_steps}, loss {losses[-1].item():.3f}, "
                              f"{tokens / (now - t_steps):,.0f} tokens/s, {left:.0f} s left of its round")

        if replicas is None:
            body_out = {k: v.detach().to("cpu", copy=True) for k, v in body.state_dict().items()}
            trained_table = embedding.tensors()
        else:  # gathered whole where the replicas shard the model
            body_out, trained_table = replicas.full(body.state_dict()), replicas.full(embedding.tensors())
        table = self.spec.upload(trained_table, embedding.global_ids)
        loss_values = torch.stack(losses).float()
        act = torch.stack(activation).float().mean() if activation else torch.tensor(float("nan"))
        if replicas is not None:  # each replica saw its share: the batch's loss is the mean of the shares'
            loss_values, act = replicas.mean(loss_values), replicas.mean(act)
        values = loss_values.tolist()
        nonfinite = _nonfinite(values, {**body_out, **{f"embedding.{k}": v for k, v in trained_table.items()}})
        optimizer_state = None
        if self._keeps_optimizer_state:
            optimizer_state = optimizer.state_dict() if replicas is None else replicas.optimizer_state(optimizer)
        sent_body, residual = body_out, {}
        if self.compression is not None and not nonfinite and reports:  # the pseudo-gradient, quantised; the
            sent_body, table, residual = self.compression.encode(assignment.download, body_out, table,  # residual
                                                                 state.residual if state else {})  # waits
        if not nonfinite and reports:  # else the source's state stays as it was after its last aggregated round
            self._save_state(assignment, trained_table, optimizer_state, stream, state, residual)
        norms = torch.stack(grad_norms).float().cpu()
        stats = {"grad_norm": float(norms.mean()), "grad_norm_max": float(norms.max()),
                 "activation_norm": float(act),
                 "local_update_norm": _distance(assignment.download.body, body_out)}
        return WorkerUpdate(participant=participant, round=plan.round, body=sent_body, tokens=tokens,
                            embedding=table, train_loss=float(np.mean(values)), last_loss=values[-1],
                            elapsed_s=time.perf_counter() - t0, stats=stats, nonfinite=nonfinite)

    def _forget_embedding(self, embedding: SourceEmbedding, optimizer: torch.optim.Optimizer, step: int) -> None:
        """ACT: re-initialise the embeddings and drop their optimizer moments."""
        with torch.no_grad():
            fresh = SourceEmbedding(embedding.vocab_size, self.cfg.model)
            fresh.reset_parameters(seeded_generator(self.cfg.run.seed, 15485863, step))
            embedding.load_tensors(fresh.tensors())
        for p in embedding.parameters():
            optimizer.state.pop(p, None)

    def _save_state(self, assignment: Assignment, table: dict[str, torch.Tensor], optimizer_state: dict | None,
                    stream, previous: SourceState | None, residual: dict[str, torch.Tensor]) -> None:
        participant = assignment.participant
        new = SourceState(rounds_trained=(previous.rounds_trained if previous else 0) + 1, residual=residual)
        if not self.spec.has_global_embedding:
            new.embedding = table
        new.optimizer = optimizer_state
        if isinstance(participant, Mixture):
            assert isinstance(stream, MixtureStream)
            new.streams = {name: s.position for name, s in zip(participant.sources, stream.streams, strict=True)}
            new.extra = {"mixture_step": stream.step}
        else:
            new.streams = {participant.name: stream.position}
        self.store.save(participant.key, assignment.plan.round, new)
        self.store.prune_all(assignment.plan.keep_from_round)
