"""The round loop that every engine runs: plan → engine.run_round → aggregate → evaluate → checkpoint.

```
dept train configs/demo.yaml                      # a run in run.dir
dept train configs/demo.yaml train.rounds=20      # any setting overridden
dept train --resume runs/demo                     # continue a killed run exactly where its checkpoint was
```
Metrics go to RUN/metrics.jsonl (one JSON object per line: `round` events with losses and bytes moved, `eval`
events with per-source results); the final results table to RUN/results.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dept.algorithm.aggregator import Aggregator
from dept.algorithm.runtime import resolve_device, seeded_generator
from dept.algorithm.sampling import sample_sources
from dept.algorithm.source_store import SourceStore
from dept.algorithm.types import RoundPlan, SharedState, WorkerUpdate
from dept.algorithm.variants import MIXTURE, EmbeddingRule, VariantSpec, spec_of
from dept.algorithm.worker import Worker
from dept.atomic_io import write_json_atomic, write_text_atomic
from dept.checkpoint import (
    TrainerState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from dept.config import Config, Variant, load_saved_config, save_config
from dept.data.prepare import check_prepared
from dept.data.prepared import GLOBAL, PreparedData
from dept.data.stream import WindowStream
from dept.engines.base import Engine
from dept.engines.local import LocalEngine
from dept.errors import CheckpointError, ConfigError
from dept.eval.comms import body_parameters_of, comms_row
from dept.eval.validation import evaluate_sources, summarize
from dept.model import Body, SourceEmbedding


def initial_shared_state(cfg: Config, spec: VariantSpec, global_vocab: int) -> SharedState:
    body = Body(cfg.model)
    body.reset_parameters(seeded_generator(cfg.run.seed, 1))
    shared = SharedState(body={k: v.detach().clone() for k, v in body.state_dict().items()})
    if spec.has_global_embedding:
        emb = SourceEmbedding(global_vocab, cfg.model)
        emb.reset_parameters(seeded_generator(cfg.run.seed, 2))
        shared.embedding = {k: v.detach().clone() for k, v in emb.tensors().items()}
    return shared


class Trainer:
    def __init__(self, cfg: Config, engine: Engine | None = None, log=print):
        self.cfg = cfg
        self.spec = spec_of(cfg.train.variant)
        check_prepared(cfg)
        self.data = PreparedData(cfg.data_dir)
        self._check_data()
        self.run_dir = cfg.run_dir
        self.store = SourceStore(self.run_dir / "sources")
        self.device = resolve_device(cfg.train.device)
        self.engine = engine or LocalEngine(Worker(cfg, self.spec, self.data, self.store, self.device))
        self.aggregator = Aggregator(self.spec, cfg.train.outer, by_tokens=cfg.train.aggregation == "tokens")
        self.log = log
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)

    def _check_data(self) -> None:
        """Fail before any file is written if the data does not fit the config."""
        for s in self.cfg.data.sources:
            src = self.data.source(s.name)
            if src.unseen != s.unseen:
                raise ConfigError(f"source '{s.name}': unseen={s.unseen} in the config but {src.unseen} in the "
                                  f"prepared data: run `dept prepare` again")
            vocab = self.spec.vocabulary
            if not s.unseen:
                batch = 1 if self.spec.baseline else self.cfg.train.batch_size
                WindowStream(src.tokens(vocab, "train"), self.cfg.train.seq_len, batch, 0, 0, s.name)
            elif self.cfg.eval.unseen_adapt_steps:  # adapted before evaluation: needs batches too
                WindowStream(src.tokens(vocab, "train"), self.cfg.train.seq_len, self.cfg.train.batch_size, 0, 0,
                             s.name)

    @property
    def total_steps(self) -> int:
        return self.cfg.train.rounds * self.cfg.train.local_steps

    def plan(self, round_index: int) -> RoundPlan:
        t = self.cfg.train
        if self.spec.baseline:
            sources = [MIXTURE]
        else:
            names = [s.name for s in self.cfg.trained_sources]
            sources = sample_sources(names, self.cfg.sources_per_round, self.cfg.run.seed, round_index)
        return RoundPlan(round_index, sources, round_index * t.local_steps, t.local_steps, self.total_steps)

    # ---- run folder -------------------------------------------------------------------------------------------

    def _start(self, resume: bool) -> tuple[SharedState, int]:
        fingerprint = self.cfg.training_fingerprint()
        ckpt = latest_checkpoint(self.run_dir)
        if resume:
            if ckpt is None:
                return self._restart_without_checkpoint(fingerprint)
            shared, state = load_checkpoint(ckpt, fingerprint)
            torch.set_rng_state(torch.tensor(state.rng_state, dtype=torch.uint8))
            self.store.discard_from(state.next_round)
            self._truncate_metrics(state.next_round)
            self.log(f"resuming {self.run_dir} at round {state.next_round}")
            return shared, state.next_round
        if ckpt is not None or self.metrics_path.exists():
            raise CheckpointError(f"{self.run_dir} already holds a run: use --resume, or another run.dir")
        if self.run_dir.exists() and any(self.run_dir.iterdir()):
            raise CheckpointError(f"{self.run_dir} exists and is not empty: choose another run.dir")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        return initial_shared_state(self.cfg, self.spec, self.data.global_vocab_size), 0

    def _restart_without_checkpoint(self, fingerprint: str) -> tuple[SharedState, int]:
        """A run stopped before its first checkpoint starts again from round 0 (same config only)."""
        saved = self.run_dir / "config.yaml"
        if not saved.is_file():
            raise CheckpointError(f"{self.run_dir}: no checkpoint to resume from")
        if load_saved_config(saved).training_fingerprint() != fingerprint:
            raise CheckpointError(f"{self.run_dir}: the run was started with another config")
        self.store.discard_from(0)
        self._truncate_metrics(0)
        self.log(f"{self.run_dir}: no checkpoint yet, starting again from round 0")
        return initial_shared_state(self.cfg, self.spec, self.data.global_vocab_size), 0

    def _truncate_metrics(self, next_round: int) -> None:
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line)["round"] < next_round:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut short by the stop

        write_text_atomic(self.metrics_path, "".join(line + "\n" for line in kept))

    def _append_metrics(self, record: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # ---- the loop ---------------------------------------------------------------------------------------------

    def train(self, resume: bool = False) -> list[dict]:
        shared, start = self._start(resume)
        t = self.cfg.train
        results: list[dict] = []
        for r in range(start, t.rounds):
            t0 = time.perf_counter()
            plan = self.plan(r)
            updates = self.engine.run_round(plan, shared)
            self.aggregator.apply(shared, updates)
            record = self._round_record(plan, updates, time.perf_counter() - t0)
            self._append_metrics(record)
            losses = " ".join(f"{u.source}={u.train_loss:.3f}" for u in updates)
            self.log(f"round {r + 1}/{t.rounds}  loss {losses}  ({record['elapsed_s']:.1f}s)")
            last = r == t.rounds - 1
            if last or (self.cfg.eval.every and (r + 1) % self.cfg.eval.every == 0):
                results = self.evaluate(shared, r)
            if last or (r + 1) % t.checkpoint_every == 0:
                save_checkpoint(self.run_dir, shared, TrainerState(r + 1, self.cfg.training_fingerprint(),
                                                                   self.spec.variant.value,
                                                                   torch.get_rng_state().tolist()),
                                keep=t.keep_checkpoints)
                self.store.prune(keep_before_round=self._oldest_checkpoint_round())
        if start >= t.rounds:
            results = self.evaluate(shared, t.rounds - 1)
        write_json_atomic(self.run_dir / "results.json", {"variant": self.spec.variant.value, "results": results,
                                                          **summarize(results), **self._communication_totals()})
        return results

    def _communication_totals(self) -> dict:
        """Bytes moved over the whole run, and what data-parallel STD would have moved for the same rounds.

        STD equivalent: each of the round's sources_per_round workers all-reduces every parameter at each of the
        N steps (sent and received). The STD/ACT runs themselves report that figure as what they move.
        """
        moved = std = 0
        for line in self.metrics_path.read_text().splitlines():
            record = json.loads(line)
            if record["event"] != "round":
                continue
            std += 2 * record["std_bytes_per_source"] * self.cfg.sources_per_round
            moved += sum(record["bytes_down"].values()) + sum(record["bytes_up"].values())
        if self.spec.baseline:
            moved = std
        return {"bytes_moved": moved, "std_equivalent_bytes": std}

    def _oldest_checkpoint_round(self) -> int:
        found = list_checkpoints(self.run_dir)
        return int(found[0].name.split("_")[1]) if found else 0

    def evaluate(self, shared: SharedState, round_index: int) -> list[dict]:
        results = evaluate_sources(self.cfg, self.spec, self.data, shared, self.store, round_index + 1,
                                   self.device)
        summary = summarize(results)
        self._append_metrics({"event": "eval", "round": round_index, "results": results, **summary})
        self.log(f"eval after round {round_index + 1}: mean bits/byte {summary['mean_bpb']:.4f} "
                 f"(seen sources), mean loss {summary['mean_loss']:.4f}")
        return results

    def _round_record(self, plan: RoundPlan, updates: list[WorkerUpdate], elapsed_s: float) -> dict:
        m = self.cfg.model
        std = comms_row(Variant.STD, body_parameters_of(m), m.d_model, self.data.global_vocab_size,
                        plan.local_steps, positions=self._position_rows())
        return {
            "event": "round", "round": plan.round, "sources": plan.sources,
            "train_loss": {u.source: u.train_loss for u in updates},
            "last_loss": {u.source: u.last_loss for u in updates},
            "tokens": {u.source: u.tokens for u in updates},
            "bytes_down": {u.source: u.bytes_down for u in updates},
            "bytes_up": {u.source: u.nbytes for u in updates},
            # STD equivalent: one all-reduce of every parameter per sequential step, each way, fp32.
            "std_bytes_per_source": std.bytes_up,
            "embedding_params_held": {u.source: self._embedding_params_held(u.source) for u in updates},
            "lr_steps": [plan.first_step, plan.first_step + plan.local_steps],
            "elapsed_s": elapsed_s,
        }

    def _position_rows(self) -> int:
        return self.cfg.model.max_seq_len if self.cfg.model.positions == "learned" else 0

    def _embedding_params_held(self, name: str) -> int:
        d = self.cfg.model.d_model
        pos = self._position_rows() * d
        if self.spec.embedding == EmbeddingRule.ROWS:
            return int(self.data.source(name).trim_vocab().size) * d + pos
        if self.spec.vocabulary == GLOBAL or name == MIXTURE:
            return self.data.global_vocab_size * d + pos
        return self.data.source(name).vocab_size(self.spec.vocabulary) * d + pos


def resume_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run folder (no config.yaml)")
    return load_saved_config(path)

