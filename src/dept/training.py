"""The round loop that every engine runs: plan → configure → engine moves it → aggregate → evaluate → checkpoint.

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
from dataclasses import asdict
from pathlib import Path

from dept import failpoints
from dept.algorithm.coordinator import Coordinator
from dept.algorithm.participants import round_participants
from dept.algorithm.runtime import seeded_generator, set_threads
from dept.algorithm.types import RoundPlan, SharedState, SourceEval, WorkerUpdate
from dept.algorithm.variants import VariantSpec, spec_of
from dept.algorithm.worker import TRAINING_STATS
from dept.atomic_io import remove_leftovers
from dept.config import Config, Variant
from dept.engines.base import Engine
from dept.engines.select import build_engine, engine_kind
from dept.errors import CheckpointError, DataError, EngineError, TrainingError
from dept.eval.comms import body_parameters_of, comms_row
from dept.eval.validation import summarize
from dept.folder_lock import FolderLock
from dept.model import Body, SourceEmbedding
from dept.run_folder import RunFolder


def initial_shared_state(cfg: Config, spec: VariantSpec, global_vocab: int) -> SharedState:
    body = Body(cfg.model)
    body.reset_parameters(seeded_generator(cfg.run.seed, 1))
    shared = SharedState(body={k: v.detach().clone() for k, v in body.state_dict().items()})
    if spec.has_global_embedding:
        emb = SourceEmbedding(global_vocab, cfg.model)
        emb.reset_parameters(seeded_generator(cfg.run.seed, 2))
        shared.embedding = {k: v.detach().clone() for k, v in emb.tensors().items()}
    return shared


def prepared_fingerprints(data_dir: Path) -> dict | None:
    """The prepared data's per-source fingerprints, recorded with a run so evaluation can check it is the same."""
    manifest = Path(data_dir) / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text()).get("source_fingerprints")
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise DataError(f"{manifest}: damaged: run `dept prepare` again") from None


class Trainer:
    def __init__(self, cfg: Config, engine: Engine | None = None, log=print, check_inputs: bool = True):
        self.cfg = cfg
        self.spec = spec_of(cfg.train.variant)
        self.run = RunFolder(cfg.run_dir)
        set_threads(cfg.train.threads)
        self.engine = engine or build_engine(cfg, self.spec, check_inputs)
        # Optional engine members (see engines/base.py): only one process writes the run folder.
        self.writes = getattr(self.engine, "writes_run_folder", True)
        self.coordinator = Coordinator(cfg, self.spec, self.engine.profiles(round_participants(cfg, self.spec)))
        self.log = log if self.writes else (lambda *_: None)
        if cfg.train.ranks_per_source > 1 and engine_kind(cfg) != "torchrun":
            self.log(f"note: train.ranks_per_source={cfg.train.ranks_per_source} applies under torchrun; "
                     "this process trains each source alone")
        worker = getattr(self.engine, "worker", None) or getattr(getattr(self.engine, "local", None), "worker", None)
        if worker is not None and self.writes:
            worker.progress = self.log  # a line now and then inside long rounds

    @property
    def global_vocab(self) -> int:
        return next(iter(self.coordinator.profiles.values())).global_vocab

    # ---- start or resume --------------------------------------------------------------------------------------

    def _start(self, resume: bool) -> tuple[SharedState, int]:
        """The writer sets up (or checks) the run folder first; the other processes then read what it holds."""
        if self.writes:
            started = self._start_writer(resume)
        barrier = getattr(self.engine, "barrier", None)
        if barrier is not None:
            barrier()
        if self.writes:
            return started
        if resume and self.run.latest_checkpoint() is not None:
            shared, state = self.run.load_latest(self.cfg.training_fingerprint())
            self.coordinator.last_round = dict(state.last_round)
            return shared, state.next_round
        return initial_shared_state(self.cfg, self.spec, self.global_vocab), 0

    def _start_writer(self, resume: bool) -> tuple[SharedState, int]:
        fingerprint = self.cfg.training_fingerprint()
        if resume:
            self._lock.acquire()  # before anything is read or truncated
            for path in remove_leftovers(self.run.path):
                self.log(f"removed {path.relative_to(self.run.path)}, left by a write that was stopped")
            check_same_training(self.run.saved_config(), self.cfg, self.run.path)
            if self._from_checkpoint is not None:
                for path in self.run.fall_back_to(self._from_checkpoint):
                    self.log(f"{path.name}: set aside in {path.parent} (resuming from round_"
                             f"{self._from_checkpoint:05d})")
            if self.run.latest_checkpoint() is None:
                return self._restart_without_checkpoint(fingerprint)
            shared, state = self.run.load_latest(fingerprint)
            self.coordinator.last_round = dict(state.last_round)
            note = self.run.restore_metrics(self.run.latest_checkpoint(), state.next_round)
            if note:
                self.log(note)
            self.log(f"resuming {self.run.path} at round {state.next_round}")
            return shared, state.next_round
        self.run.create(self.cfg, prepared_fingerprints(self.cfg.data_dir))
        self._lock.acquire()
        return initial_shared_state(self.cfg, self.spec, self.global_vocab), 0

    def _restart_without_checkpoint(self, fingerprint: str) -> tuple[SharedState, int]:
        """A run stopped before its first checkpoint starts again from round 0 (same config only)."""
        check_same_training(self.run.saved_config(), self.cfg, self.run.path)
        self.run.truncate_metrics(0)
        self.log(f"{self.run.path}: no checkpoint yet, starting again from round 0")
        return initial_shared_state(self.cfg, self.spec, self.global_vocab), 0

    # ---- the loop ---------------------------------------------------------------------------------------------

    def train(self, resume: bool = False, from_checkpoint: int | None = None) -> list[SourceEval]:
        """`from_checkpoint`: resume from checkpoint round_N (N = the round it resumes at) instead of the newest."""
        self._lock = FolderLock(self.run.path, "dept train", self.log) if self.writes else None
        self._from_checkpoint = from_checkpoint
        try:
            return self._train(resume)
        except OSError as err:  # a full disk, a read-only or vanished folder: every write so far is whole
            if not self.writes:
                raise
            ckpt = self.run.latest_checkpoint()
            raise TrainingError(f"{err.filename or self.run.path}: {err.strerror or err}: stopped; "
                                f"{'checkpoint ' + ckpt.name if ckpt else 'the run folder'} is intact: "
                                f"`dept train --resume {self.run.path}` continues once that is fixed") from None
        finally:
            if self._lock is not None:
                self._lock.release()

    def _train(self, resume: bool) -> list[SourceEval]:
        shared, start = self._start(resume)
        failpoints.reached("startup")
        t = self.cfg.train
        results: list[SourceEval] = []
        t_start = time.perf_counter()
        for r in range(start, t.rounds):
            t0 = time.perf_counter()
            plan = self.coordinator.plan(r, keep_from_round=self.run.oldest_checkpoint_round())
            updates = self._leave_out_nonfinite(plan, self._run_round(plan, shared))
            self.coordinator.aggregate(shared, updates, getattr(self.engine, "combine", None))
            record = self._round_record(plan, updates, time.perf_counter() - t0)
            if self.writes:
                self.run.append_metrics(record)
            losses = " ".join(f"{u.key}={u.train_loss:.3f}" for u in updates)
            left = (t.rounds - r - 1) * (time.perf_counter() - t_start) / (r + 1 - start)
            self.log(f"round {r + 1}/{t.rounds}  loss {losses}  ({record['elapsed_s']:.1f}s"
                     + (f", about {_duration(left)} to go)" if r + 1 < t.rounds else ")"))
            last = r == t.rounds - 1
            if last or (self.cfg.eval.every and (r + 1) % self.cfg.eval.every == 0):
                results = self.evaluate(shared, r)
            if self.writes and (last or (r + 1) % t.checkpoint_every == 0):
                self.run.save_checkpoint(self.cfg, shared, r + 1, self.spec.variant.value,
                                         self.coordinator.last_round)
        if start >= t.rounds:  # finished, or stopped between its last checkpoint and results.json
            logged = self.writes and any(r["round"] == t.rounds - 1 for r in self.run.metrics("eval"))
            results = self.evaluate(shared, t.rounds - 1, record=not logged)  # one eval line per evaluation
        if self.writes:
            self.run.write_results({"variant": self.spec.variant.value, "results": [asdict(r) for r in results],
                                    **summarize(results), **self._communication_totals()})
        return results

    def _run_round(self, plan: RoundPlan, shared: SharedState) -> list[WorkerUpdate]:
        """The round's updates; with fewer answers than `train.min_sources`, the round again (the participants
        start from the same state, so a retry trains exactly what the first try would have)."""
        t = self.cfg.train
        required = min(t.min_sources or len(plan.keys), len(plan.keys))
        for attempt in range(t.round_retries + 1):
            updates = self.engine.run_round(self.coordinator.configure_round(plan, shared))
            keys = [u.key for u in updates]
            if keys != [k for k in plan.keys if k in keys]:
                raise RuntimeError(f"round {plan.round}: the engine returned updates for {keys}, "
                                   f"the plan had {plan.keys}")
            if len(updates) >= required:
                if len(updates) < len(plan.keys):
                    missing = sorted(set(plan.keys) - set(keys))
                    self.log(f"round {plan.round + 1}: no answer from {', '.join(missing)}; aggregating the "
                             f"{len(updates)} that answered")
                return updates
            self.log(f"round {plan.round + 1}: {len(updates)} of {len(plan.keys)} sources answered "
                     f"(train.min_sources {required}); try {attempt + 2} of {t.round_retries + 1}")
        raise EngineError(f"round {plan.round + 1}: only {len(updates)} of {len(plan.keys)} sampled sources "
                          f"answered in {t.round_retries + 1} tries (train.min_sources {required}): stopped; "
                          f"`dept train --resume {self.run.path}` continues from the last checkpoint")

    def _leave_out_nonfinite(self, plan: RoundPlan, updates: list[WorkerUpdate]) -> list[WorkerUpdate]:
        """Updates with NaN or inf never reach the aggregator (nor, under torchrun, the partial sums: every rank
        leaves out the same ones, from the flags it received). The source's state was not saved by its worker,
        and its last aggregated round stays as it was, so its next round starts from its state before this one."""
        bad = [u for u in updates if u.nonfinite]
        for u in bad:
            if self.writes:
                self.run.append_metrics({"event": "nonfinite", "round": plan.round, "source": u.key,
                                         "what": u.nonfinite, "action": self.cfg.train.on_nonfinite})
            self.log(f"round {plan.round + 1}: {u.key}: {u.nonfinite}; "
                     + ("its update is left out of the round and its state kept as it was"
                        if self.cfg.train.on_nonfinite == "skip" else "stopping"))
        if bad and self.cfg.train.on_nonfinite == "stop":
            ckpt = self.run.latest_checkpoint()
            raise TrainingError(f"round {plan.round + 1}: {bad[0].key}: {bad[0].nonfinite} (train.on_nonfinite=stop): "
                                f"stopped before aggregating; {ckpt.name if ckpt else 'no checkpoint yet'} is intact; "
                                f"`dept train --resume {self.run.path} train.on_nonfinite=skip` leaves such updates "
                                f"out")
        return [u for u in updates if not u.nonfinite]

    def evaluate(self, shared: SharedState, round_index: int, record: bool = True) -> list[SourceEval]:
        results = self.engine.evaluate(self.coordinator.configure_evaluation(shared))
        summary = summarize(results)
        if record and self.writes:
            self.run.append_metrics({"event": "eval", "round": round_index,
                                     "results": [asdict(r) for r in results], **summary})
        self.log(f"eval after round {round_index + 1}: mean bits/byte {summary['mean_bpb']:.4f} "
                 f"(seen sources), mean loss {summary['mean_loss']:.4f}")
        return results

    # ---- accounting -------------------------------------------------------------------------------------------

    def _communication_totals(self) -> dict:
        """Bytes moved over the whole run, and what data-parallel STD would have moved for the same rounds.

        STD equivalent: each of the round's sources_per_round workers all-reduces every parameter at each of the
        N steps (sent and received). The STD/ACT runs themselves move that: on one process the figure is the
        formula; data-parallel under torchrun it is measured, each rank's gradient buffers handed to the per-step
        all-reduce (sent and received). `within_source_bytes`: the same per-step gradient traffic of DEPT sources
        trained by several ranks (`train.ranks_per_source`), inside a site, apart from what crosses between sites.
        """
        moved = std = replicated = 0
        measured = True
        for record in self.run.metrics("round"):
            std += 2 * record["std_bytes_per_source"] * self.cfg.sources_per_round
            moved += sum(record["bytes_down"].values()) + sum(record["bytes_up"].values())
            per_rank = record.get("engine", {}).get("grad_all_reduce_bytes")
            measured = measured and per_rank is not None
            replicated += 2 * sum(per_rank or [])
        totals = {"bytes_moved": moved, "std_equivalent_bytes": std}
        if self.spec.baseline:
            totals.update(bytes_moved=replicated if measured else std, bytes_measured=measured)
        elif replicated:
            totals["within_source_bytes"] = replicated
        return totals

    def _round_record(self, plan: RoundPlan, updates: list[WorkerUpdate], elapsed_s: float) -> dict:
        m = self.cfg.model
        std = comms_row(Variant.STD, body_parameters_of(m), m.d_model, self.global_vocab, plan.local_steps,
                        positions=self._position_rows())
        return {
            "event": "round", "round": plan.round, "sources": plan.keys,
            "train_loss": {u.key: u.train_loss for u in updates},
            "last_loss": {u.key: u.last_loss for u in updates},
            "tokens": {u.key: u.tokens for u in updates},
            "bytes_down": {u.key: u.moved.down for u in updates},
            "bytes_up": {u.key: u.moved.up for u in updates},
            # STD equivalent: one all-reduce of every parameter per sequential step, each way, fp32.
            "std_bytes_per_source": std.bytes_up,
            "embedding_params_held": {u.key: self._embedding_params_held(u) for u in updates},
            "lr_steps": [plan.first_step, plan.first_step + plan.local_steps],
            "elapsed_s": elapsed_s,
            "train_s": {u.key: u.elapsed_s for u in updates},
            # Training health (the paper's Figure 2): the outer step's and each participant's (worker.TRAINING_STATS)
            "stability": {**self.coordinator.aggregator.stats,
                          **{name: {u.key: u.stats.get(name) for u in updates} for name in TRAINING_STATS}},
            **({"engine": self.engine.traffic()} if hasattr(self.engine, "traffic") else {}),
        }

    def _position_rows(self) -> int:
        return self.cfg.model.max_seq_len if self.cfg.model.positions == "learned" else 0

    def _embedding_params_held(self, update: WorkerUpdate) -> int:
        rows = self.coordinator.profile(update.participant).table_rows
        return (rows + self._position_rows()) * self.cfg.model.d_model


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


RESUMABLE_CHANGES = ("run.dir", "data.dir", "train.device", "train.threads", "train.speed", "train.engine",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.min_sources", "train.round_retries",
                     "train.on_nonfinite", "train.ranks_per_source", "train.data_parallel", "train.micro_batch_size",
                     "train.activation_checkpointing",
                     "eval.*", "flower.*")


def check_same_training(saved: Config, cfg: Config, where: Path) -> None:
    """Refuse to continue a run with settings that change its trajectory, naming them."""
    if saved.training_fingerprint() == cfg.training_fingerprint():
        return
    diff = saved.settings_differing_from(cfg)
    shown = ", ".join(diff[:5]) + (f" and {len(diff) - 5} more" if len(diff) > 5 else "")
    raise CheckpointError(f"{where} was trained with other values of {shown or 'its settings'}; a resumed run "
                          f"may change only {', '.join(RESUMABLE_CHANGES)}")


def run_training(cfg: Config, resume: bool = False, log=print, from_checkpoint: int | None = None) -> bool:
    """Train with the engine the config names; True where this process wrote the run folder (rank 0)."""
    if engine_kind(cfg) == "flower":
        from dept.engines.flower_app import refuse_pooled
        from dept.engines.flower_simulation import train_in_simulation

        refuse_pooled(round_participants(cfg, spec_of(cfg.train.variant)))  # before a simulation starts
        if resume and from_checkpoint is not None:
            RunFolder(cfg.run_dir).fall_back_to(from_checkpoint)

        train_in_simulation(cfg, resume, log)
        return True
    trainer = Trainer(cfg, log=log)
    try:
        trainer.train(resume=resume, from_checkpoint=from_checkpoint)
    finally:
        close = getattr(trainer.engine, "close", None)
        if close is not None:
            close()
    return trainer.writes


def resume_config(run_dir: Path) -> Config:
    return RunFolder(run_dir).saved_config()


def evaluate_run(run_dir: Path, log=print, max_bytes: int | None = None) -> dict:
    """Evaluate a run's last checkpoint from its prepared data alone (the raw corpus may be gone)."""
    run = RunFolder(run_dir)
    cfg = run.saved_config()
    if max_bytes:
        cfg.eval.max_bytes = max_bytes
    recorded = run.data_fingerprints()
    if recorded is not None and prepared_fingerprints(cfg.data_dir) not in (None, recorded):
        raise DataError(f"the prepared data in {cfg.data_dir} changed since {run_dir} trained on it: "
                        "evaluate with the data it was trained on")
    trainer = Trainer(cfg, log=log, check_inputs=False)
    shared, state = run.load_latest(cfg.training_fingerprint())
    trainer.coordinator.last_round = dict(state.last_round)
    results = trainer.evaluate(shared, state.next_round - 1, record=False)
    out = {"variant": trainer.spec.variant.value, "round": state.next_round, "results": [asdict(r) for r in results],
           **summarize(results)}
    run.write_results(out, "eval.json")
    return out
