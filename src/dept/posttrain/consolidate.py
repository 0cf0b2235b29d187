"""Continued pre-training (PAPER.md, "After pre-training"): one global-vocabulary model for every source.

A global-vocabulary table is trained together with the body on the temperature-sampled mixture of the run's
trained sources (p_k ∝ tokens_k^τ, τ = `train.std_temperature`, global tokenizer) for a share of the run's
pre-training steps (default 15%; the paper reports 15–19% is enough):

| run                  | table it starts from          | peak learning rate       |
|----------------------|-------------------------------|--------------------------|
| SPEC, SPEC-OPT       | a fresh random global table   | the run's peak           |
| GLOB, TRIM, STD, ACT | the run's own global table    | half the run's peak      |

The schedule is a linear warm-up (the run's warm-up, at most a tenth of the steps) then cosine decay to
`min_lr_ratio` of that peak, with the run's AdamW settings, batch (STD's: `std_batch_size`, or `batch_size ×
sources_per_round`), sequence length and precision. Every source, trained and unseen, is scored in bits per byte on
the same validation documents before and after; the run's own figure (its variant's tables and tokenizers) is
shown beside them.

Progress is saved every `checkpoint_every` steps in a hidden folder beside the output (`.NAME.progress`), and
`resume=True` continues from it exactly: the same batches, the same optimizer state, the same result as an
uninterrupted consolidation. The output is a model folder (with `consolidation.json`).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file

from dept import failpoints
from dept.algorithm.runtime import resolve_device, seeded_generator
from dept.algorithm.schedule import learning_rate
from dept.algorithm.source_store import flatten_optimizer, unflatten_optimizer
from dept.algorithm.step import build_optimizer, set_learning_rate, train_step
from dept.atomic_io import publish_dir, write_json_atomic
from dept.data.prepared import GLOBAL
from dept.data.stream import MixtureStream, StreamPosition, WindowStream
from dept.data.tokenizer import load_tokenizer
from dept.errors import CheckpointError, DeptError, TrainingError
from dept.model import Body, LanguageModel, SourceEmbedding
from dept.posttrain.folder import ModelFolder, is_model_folder
from dept.posttrain.from_run import RunModels
from dept.posttrain.scoring import score_stream

DEFAULT_FRACTION = 0.15
_STREAM_OFFSET = 7_000  # consolidation's window orders differ from the run's own


@dataclass(frozen=True)
class ConsolidationPlan:
    steps: int
    peak_lr: float
    warmup_steps: int
    batch_size: int
    temperature: float
    from_run_table: bool  # start from the run's global table (else a fresh one)
    pretraining_steps: int

    def fingerprint(self, run_fingerprint: str) -> str:
        blob = json.dumps({"run": run_fingerprint, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class SourceRow:
    source: str
    unseen: bool
    run_bpb: float | None  # the run's own evaluation (its variant's table and tokenizer), when recorded
    before_bpb: float  # global tokenizer, the table consolidation starts from
    after_bpb: float  # global tokenizer, consolidated
    bytes: int
    documents: int


@dataclass
class ConsolidationResult:
    out: Path
    variant: str
    plan: ConsolidationPlan
    rows: list[SourceRow] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    finished: bool = True

    def mean(self, key: str, unseen: bool = False) -> float:
        vals = [getattr(r, key) for r in self.rows if r.unseen == unseen and getattr(r, key) is not None]
        return sum(vals) / len(vals) if vals else math.nan

    def to_dict(self) -> dict:
        return {"out": str(self.out), "variant": self.variant, "plan": asdict(self.plan),
                "rows": [asdict(r) for r in self.rows],
                "mean_bpb_before": self.mean("before_bpb"), "mean_bpb_after": self.mean("after_bpb"),
                "mean_bpb_run": self.mean("run_bpb"), "losses": self.losses}


def plan_consolidation(models: RunModels, fraction: float = DEFAULT_FRACTION, steps: int | None = None,
                       lr: float | None = None, batch_size: int | None = None) -> ConsolidationPlan:
    cfg, t = models.cfg, models.cfg.train
    total = t.rounds * t.local_steps
    if steps is None:
        if not 0 < fraction <= 1:
            raise DeptError(f"--fraction {fraction}: must be in (0, 1]")
        steps = max(1, round(fraction * total))
    if steps < 1:
        raise DeptError(f"--steps {steps}: must be at least 1")
    if lr is not None and not 0 < lr < math.inf:
        raise DeptError(f"--lr {lr}: must be a positive number")
    if batch_size is not None and batch_size < 1:
        raise DeptError(f"--batch-size {batch_size}: must be at least 1")
    from_run_table = models.spec.has_global_embedding
    peak = lr if lr is not None else t.inner.lr * (0.5 if from_run_table else 1.0)
    return ConsolidationPlan(steps=steps, peak_lr=peak, warmup_steps=min(t.inner.warmup_steps, steps // 10),
                             batch_size=batch_size or cfg.std_batch_size,
                             temperature=t.std_temperature, from_run_table=from_run_table, pretraining_steps=total)


class Consolidator:
    def __init__(self, run_dir: Path, out: Path | None = None, *, fraction: float = DEFAULT_FRACTION,
                 steps: int | None = None, lr: float | None = None, batch_size: int | None = None,
                 checkpoint_every: int = 0, device: str = "auto", log=print):
        self.models = RunModels(run_dir)
        self.cfg = self.models.cfg
        self.out = Path(out) if out else self.models.run.path / "consolidated"
        self.progress_dir = self.out.with_name(f".{self.out.name}.progress")
        self.plan = plan_consolidation(self.models, fraction, steps, lr, batch_size)
        self.fingerprint = self.plan.fingerprint(self.cfg.training_fingerprint())
        self.checkpoint_every = checkpoint_every or max(1, self.plan.steps // 10)
        self.device = resolve_device(device if device != "auto" else self.cfg.train.device)
        self.log = log
        self.tokenizer = load_tokenizer(self.models.data.global_tokenizer_path)
        self.before: dict[str, list] = {}  # source -> [bits per byte, bytes, documents] of the starting model

    # ---- model and data ---------------------------------------------------------------------------------------

    def _start_model(self) -> LanguageModel:
        cfg, models = self.cfg, self.models
        body = Body(cfg.model)
        body.load_state_dict(models.shared.body)
        emb = SourceEmbedding(models.data.global_vocab_size, cfg.model)
        if self.plan.from_run_table:
            emb.load_tensors(models.shared.embedding)
        else:
            emb.reset_parameters(seeded_generator(cfg.run.seed, 3))
        return LanguageModel(body, emb).to(self.device)

    def _stream(self) -> MixtureStream:
        cfg, data = self.cfg, self.models.data
        trained = [(i, s.name) for i, s in enumerate(cfg.data.sources) if not s.unseen]
        streams = [WindowStream(data.source(name).tokens(GLOBAL, "train"), cfg.train.seq_len, 1, cfg.run.seed,
                                _STREAM_OFFSET + i, name) for i, name in trained]
        counts = [data.source(name).n_tokens(GLOBAL, "train") for _, name in trained]
        return MixtureStream(streams, MixtureStream.temperature_weights(counts, self.plan.temperature),
                             self.plan.batch_size, cfg.run.seed + _STREAM_OFFSET)

    # ---- progress ---------------------------------------------------------------------------------------------

    def _save_progress(self, lm: LanguageModel, optimizer, stream: MixtureStream, step: int,
                       losses: list[float]) -> None:
        tmp = self.progress_dir.with_name(self.progress_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in lm.state_dict().items()}
        save_file({**tensors, **opt_tensors}, str(tmp / "state.safetensors"))
        write_json_atomic(tmp / "state.json", {
            "fingerprint": self.fingerprint, "step": step, "before": self.before, "optimizer": opt_meta,
            "losses": losses, "mixture_step": stream.step,
            "streams": {s.stream_id: asdict(s.position) for s in stream.streams}})
        publish_dir(tmp, self.progress_dir)

    def _load_progress(self, lm: LanguageModel, optimizer, stream: MixtureStream) -> tuple[int, list[float]]:
        meta = json.loads((self.progress_dir / "state.json").read_text())
        if meta["fingerprint"] != self.fingerprint:
            raise CheckpointError(f"{self.progress_dir}: a consolidation with other settings (steps, learning "
                                  "rate, batch) is in progress there: resume it with the same settings, or delete it")
        tensors = load_file(str(self.progress_dir / "state.safetensors"))
        lm.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        stream.step = meta["mixture_step"]
        self.before = meta["before"]
        for s in stream.streams:
            s.seek(StreamPosition(**meta["streams"][str(s.stream_id)]))
        return meta["step"], meta["losses"]

    # ---- evaluation -------------------------------------------------------------------------------------------

    def _score_all(self, lm: LanguageModel) -> dict[str, tuple[float, int, int]]:
        cfg, data = self.cfg, self.models.data
        out = {}
        for s in cfg.data.sources:
            res, documents = score_stream(lm, data.source(s.name).tokens(GLOBAL, "val"), data.global_byte_lengths,
                                          cfg.train.seq_len, cfg.eval.max_bytes, cfg.eval.max_documents,
                                          cfg.eval.batch_size, cfg.train.precision)
            out[s.name] = (res.bits_per_byte, res.bytes, documents)
        return out

    def _run_figures(self) -> dict[str, float]:
        path = self.models.run.results_path
        if not path.is_file():
            return {}
        return {r["source"]: r["bpb"] for r in json.loads(path.read_text()).get("results", [])}

    # ---- the job ----------------------------------------------------------------------------------------------

    def run(self, resume: bool = False, stop_after: int | None = None) -> ConsolidationResult:
        """Train (or continue), then write the model folder. `stop_after`: leave after this many steps of this
        call with progress saved (result.finished False), as a stopped job would."""
        plan, cfg = self.plan, self.cfg
        if is_model_folder(self.out) and not self.progress_dir.exists():
            finished = self._finished() if resume else None
            if finished is not None:  # a resume of a consolidation that ended (e.g. stopped just after it ended)
                self.log(f"{self.out}: this consolidation has finished; nothing to resume")
                return finished
            raise DeptError(f"{self.out} already holds a consolidated model: delete it or choose --out")
        if self.progress_dir.exists() and not resume:
            raise DeptError(f"{self.out}: an unfinished consolidation is there ({self.progress_dir}): "
                            "continue it with --resume, or delete that folder")
        lm = self._start_model()
        optimizer = build_optimizer(lm.parameters(), cfg.train.inner, self.device)
        stream = self._stream()
        start, losses = (self._load_progress(lm, optimizer, stream) if resume and self.progress_dir.exists()
                         else (0, []))
        if start == 0:
            self.before = self._score_all(lm)
        self.log(f"consolidating {self.models.run.path} ({self.models.variant}): {plan.steps} steps "
                 f"({plan.steps / plan.pretraining_steps:.0%} of its {plan.pretraining_steps}), peak lr "
                 f"{plan.peak_lr:g} from {'its global table' if plan.from_run_table else 'a fresh global table'}, "
                 f"batch {plan.batch_size}" + (f"; resuming at step {start}" if start else ""))
        every = max(1, plan.steps // 20)
        t0, done_here = time.perf_counter(), 0
        lm.train()
        for step in range(start, plan.steps):
            set_learning_rate(optimizer, learning_rate(step, plan.steps, plan.peak_lr, plan.warmup_steps,
                                                       cfg.train.inner.min_lr_ratio))
            loss = train_step(lm, optimizer, stream.next_batch().to(self.device), cfg.train.inner.grad_clip,
                              cfg.train.precision)
            losses.append(float(loss))
            done_here += 1
            failpoints.reached("step")
            if (step + 1) % every == 0 or step + 1 == plan.steps:
                rate = done_here / (time.perf_counter() - t0)
                self.log(f"  step {step + 1}/{plan.steps}  loss {losses[-1]:.4f}  "
                         f"({rate:.2f} steps/s, {(plan.steps - step - 1) / rate:.0f}s left)")
            if (step + 1) % self.checkpoint_every == 0 or step + 1 == plan.steps or done_here == stop_after:
                if not all(bool(p.isfinite().all()) for p in lm.parameters()):  # never keep diverged weights
                    raise TrainingError(f"consolidation diverged: the weights are not finite after step {step + 1} "
                                        f"(peak lr {plan.peak_lr:g}): lower --lr")
                self._save_progress(lm, optimizer, stream, step + 1, losses)
            if done_here == stop_after and step + 1 < plan.steps:
                return ConsolidationResult(self.out, self.models.variant, plan, [], losses, finished=False)
        return self._finish(lm, losses)

    def _finished(self) -> ConsolidationResult | None:
        """The result written in the output folder, where it is this consolidation's (same run and plan)."""
        try:
            done = json.loads((self.out / "consolidation.json").read_text())
            plan = ConsolidationPlan(**done["plan"])
            rows = [SourceRow(**r) for r in done["rows"]]
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if plan != self.plan or done.get("variant") != self.models.variant:
            return None
        return ConsolidationResult(self.out, self.models.variant, plan, rows, done.get("losses", []))

    def _finish(self, lm: LanguageModel, losses: list[float]) -> ConsolidationResult:
        before = self.before
        after = self._score_all(lm)
        run_bpb = self._run_figures()
        rows = [SourceRow(s.name, s.unseen, run_bpb.get(s.name), before[s.name][0], after[s.name][0],
                          after[s.name][1], after[s.name][2]) for s in self.cfg.data.sources]
        result = ConsolidationResult(self.out, self.models.variant, self.plan, rows, losses)
        state = {k: v.detach().cpu() for k, v in lm.state_dict().items()}
        folder = ModelFolder(self.cfg.model, {k[5:]: v for k, v in state.items() if k.startswith("body.")},
                             lm.embedding.tensors(), self.tokenizer,
                             {"kind": "consolidated", "run": str(self.models.run.path.resolve()),
                              "variant": self.models.variant, "round": self.models.round,
                              "steps": self.plan.steps, "peak_lr": self.plan.peak_lr})
        folder.save(self.out, {"consolidation.json": json.dumps(result.to_dict(), indent=2) + "\n"})
        shutil.rmtree(self.progress_dir, ignore_errors=True)
        self.log(f"mean bits/byte of the trained sources, global tokenizer: {result.mean('before_bpb'):.4f} -> "
                 f"{result.mean('after_bpb'):.4f}; model folder: {self.out}")
        return result


def consolidate(run_dir: Path, out: Path | None = None, resume: bool = False, stop_after: int | None = None,
                **settings) -> ConsolidationResult:
    return Consolidator(run_dir, out, **settings).run(resume=resume, stop_after=stop_after)
