"""Plasticity: how fast a pre-trained body learns a source it never saw (PAPER.md, "After pre-training").

The new source's documents are split into train and held-out by document hash (`data.val_fraction` of the first
run), and a byte-level tokenizer of its own is trained on its train split. Each run's body then gets a fresh,
seeded embedding for that tokenizer and trains for S steps (the run's AdamW settings, batch, sequence length and
precision; linear warm-up over at most a tenth of the steps, then cosine decay to `min_lr_ratio` of the run's
peak), with the body frozen (`freeze_body`) or trained too. Bits per byte on the held-out documents (the leading
ones up to the run's `eval.max_bytes`) are logged at step 0 and every `eval_every` steps.

Several runs adapt on the same data, with the same tokenizer, the same embedding initialisation and the same
budget, so their curves compare bodies alone. The result of each is a model folder; with several runs they go to
OUT/LABEL/ beside `adaptation.json` and the plot `plasticity.png`.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from dept import failpoints
from dept.algorithm.runtime import resolve_device, seeded_generator
from dept.algorithm.schedule import learning_rate
from dept.algorithm.step import build_optimizer, set_learning_rate, train_step
from dept.atomic_io import publish_dir, write_json_atomic
from dept.config import SourceConfig, TokenizerKind
from dept.data.documents import SplitDocuments, read_source
from dept.data.stream import WindowStream
from dept.data.tokenizer import capped, encode_stream, token_byte_lengths, train_tokenizer
from dept.errors import DataError, DeptError, TrainingError
from dept.model import Body, LanguageModel, SourceEmbedding
from dept.posttrain.folder import ModelFolder
from dept.posttrain.from_run import RunModels
from dept.posttrain.scoring import score_stream


@dataclass(frozen=True)
class NewSource:
    """A source never trained on: its documents split into train and held-out, and its own tokenizer."""

    name: str
    docs: SplitDocuments
    tokenizer: Tokenizer

    @classmethod
    def read(cls, name: str, files: Sequence[str], vocab_size: int, val_fraction: float,
             kind: TokenizerKind = TokenizerKind.BPE, sample_chars: int = 10_000_000,
             base_dir: Path = Path(".")) -> NewSource:
        try:
            src = SourceConfig(name=name, files=list(files))
        except Exception as err:
            raise DataError(f"--source {name}: {str(err).splitlines()[-1].strip()}") from None
        docs = read_source(src, Path(base_dir), val_fraction, 1)
        tokenizer = train_tokenizer(capped(docs.train, sample_chars), kind, vocab_size)
        return cls(name, docs, tokenizer)


@dataclass(frozen=True)
class AdaptSettings:
    steps: int = 200
    eval_every: int = 20
    freeze_body: bool = False
    lr: float | None = None  # default: the run's peak
    seed: int = 0


@dataclass
class Curve:
    label: str
    run: str
    variant: str
    steps: list[int] = field(default_factory=list)
    bpb: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # mean loss since the previous point (nan at step 0)
    elapsed_s: float = 0.0


def _body_and_table(models: RunModels, vocab: int, seed: int) -> tuple[Body, SourceEmbedding]:
    body = Body(models.cfg.model)
    body.load_state_dict(models.shared.body)
    emb = SourceEmbedding(vocab, models.cfg.model)
    emb.reset_parameters(seeded_generator(seed, 5))  # the same fresh table for every run of one shape
    return body, emb


def adapt_run(models: RunModels, source: NewSource, settings: AdaptSettings, label: str,
              log=print, device: str = "auto") -> tuple[ModelFolder, Curve]:
    cfg, t = models.cfg, models.cfg.train
    dev = resolve_device(device if device != "auto" else t.device)
    vocab = source.tokenizer.get_vocab_size()
    body, emb = _body_and_table(models, vocab, settings.seed)
    lm = LanguageModel(body, emb).to(dev)
    train_ids = encode_stream(source.tokenizer, source.docs.train)
    val_ids = encode_stream(source.tokenizer, source.docs.val)
    lengths = token_byte_lengths(source.tokenizer)
    try:
        stream = WindowStream(train_ids, t.seq_len, t.batch_size, settings.seed, 0, source.name)
    except DataError as err:
        raise DataError(f"--source {source.name}: {err}") from None
    body.requires_grad_(not settings.freeze_body)
    params = emb.parameters() if settings.freeze_body else lm.parameters()
    optimizer = build_optimizer(params, t.inner, dev)
    peak = settings.lr or t.inner.lr
    warmup = min(t.inner.warmup_steps, settings.steps // 10)
    curve = Curve(label, str(models.run.path), models.variant)

    def point(step: int, losses: list[float]) -> None:
        res, _ = score_stream(lm, val_ids, lengths, t.seq_len, cfg.eval.max_bytes, cfg.eval.max_documents,
                              cfg.eval.batch_size, t.precision)
        curve.steps.append(step)
        curve.bpb.append(res.bits_per_byte)
        curve.train_loss.append(float(np.mean(losses)) if losses else math.nan)
        log(f"  {label}: step {step}/{settings.steps}  held-out bits/byte {res.bits_per_byte:.4f}"
            + (f"  train loss {curve.train_loss[-1]:.4f}" if losses else ""))

    t0 = time.perf_counter()
    point(0, [])
    since: list[float] = []
    lm.train()
    for step in range(settings.steps):
        set_learning_rate(optimizer, learning_rate(step, settings.steps, peak, warmup, t.inner.min_lr_ratio))
        since.append(float(train_step(lm, optimizer, stream.next_batch().to(dev), t.inner.grad_clip, t.precision)))
        failpoints.reached("step")
        if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
            point(step + 1, since)
            since = []
    curve.elapsed_s = time.perf_counter() - t0
    if not all(bool(p.isfinite().all()) for p in lm.parameters()):
        raise TrainingError(f"{label}: adapting to '{source.name}' diverged: the weights are not finite after "
                            f"{settings.steps} steps (peak lr {peak:g}): lower --lr")
    body.requires_grad_(True)
    folder = ModelFolder(cfg.model, {k: v.detach().cpu() for k, v in body.state_dict().items()},
                         {k: v.detach().cpu() for k, v in emb.tensors().items()}, source.tokenizer,
                         {"kind": "adapted", "run": str(models.run.path.resolve()), "variant": models.variant,
                          "round": models.round, "source": source.name, "steps": settings.steps,
                          "freeze_body": settings.freeze_body})
    return folder, curve


@dataclass
class AdaptResult:
    out: Path
    source: str
    settings: AdaptSettings
    curves: list[Curve]
    plot: Path | None
    documents: dict

    def to_dict(self) -> dict:
        return {"source": self.source, "settings": asdict(self.settings), "documents": self.documents,
                "curves": [asdict(c) for c in self.curves], "plot": str(self.plot) if self.plot else None}


def run_labels(runs: Sequence[Path]) -> list[str]:
    """A short name per run: its folder name, made unique."""
    labels: list[str] = []
    for r in runs:
        base = Path(r).resolve().name
        label, i = base, 2
        while label in labels:
            label, i = f"{base}-{i}", i + 1
        labels.append(label)
    return labels


def adapt(runs: Sequence[Path], name: str, files: Sequence[str], out: Path | None = None,
          settings: AdaptSettings = AdaptSettings(), vocab_size: int | None = None, log=print,
          device: str = "auto") -> AdaptResult:
    if not runs:
        raise DeptError("adapt needs at least one run folder")
    if settings.steps < 1 or settings.eval_every < 1:
        raise DeptError("--steps and --eval-every must be at least 1")
    if settings.lr is not None and not 0 < settings.lr < math.inf:
        raise DeptError(f"--lr {settings.lr}: must be a positive number")
    if not 0 <= settings.seed < 2**63:
        raise DeptError(f"--seed {settings.seed}: must be in [0, 2**63)")
    if vocab_size is not None and not 300 <= vocab_size <= 1 << 20:
        raise DeptError(f"--vocab-size {vocab_size}: must be in [300, {1 << 20}] (as tokenizer.per_source.vocab_size)")
    all_models = [RunModels(r) for r in runs]  # every run checked before any work
    first = all_models[0].cfg
    if name in {s.name for m in all_models for s in m.cfg.trained_sources}:
        log(f"note: '{name}' is also the name of a trained source of a run; it is adapted as a new source")
    if out is None:
        if len(runs) > 1:
            raise DeptError("several runs: name the output folder with --out")
        out = all_models[0].run.path / f"adapted_{name}"
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "adaptation.json").is_file():
        raise DeptError(f"{out} exists and holds something else: choose another --out")
    vocab = vocab_size or first.data.tokenizer.per_source.vocab_size
    source = NewSource.read(name, files, vocab, first.data.val_fraction, first.data.tokenizer.per_source.kind,
                            first.data.tokenizer.per_source.sample_chars)
    documents = {"train": len(source.docs.train), "held_out": len(source.docs.val),
                 "held_out_bytes": sum(len(d.encode("utf-8")) for d in source.docs.val),
                 "vocab_size": source.tokenizer.get_vocab_size()}
    log(f"new source '{name}': {documents['train']} train / {documents['held_out']} held-out documents, "
        f"own tokenizer of {documents['vocab_size']} tokens; {settings.steps} steps, body "
        f"{'frozen' if settings.freeze_body else 'trained'}")
    labels = run_labels(runs)
    curves, folders = [], []
    for models, label in zip(all_models, labels, strict=True):
        folder, curve = adapt_run(models, source, settings, label, log, device)
        folders.append(folder)
        curves.append(curve)
    result = AdaptResult(out, name, settings, curves, None, documents)
    single = len(runs) == 1
    tmp = out.with_name(f".{out.name}.tmp")  # written whole, then renamed: a stopped adaptation leaves no half
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for folder, label in zip(folders, labels, strict=True):
        folder.save(tmp if single else tmp / label)
    plot = plot_curves(curves, tmp / "plasticity.png", name, settings, log)
    result.plot = out / plot.name if plot else None
    write_json_atomic(tmp / "adaptation.json", result.to_dict())
    publish_dir(tmp, out)
    print_table = " | ".join(f"{c.label} {c.bpb[0]:.3f} -> {c.bpb[-1]:.3f}" for c in curves)
    log(f"held-out bits/byte, step 0 -> {settings.steps}: {print_table}")
    return result


def plot_curves(curves: list[Curve], path: Path, name: str, settings: AdaptSettings, log=print) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("the plot needs matplotlib (pip install 'dept[plot]'); the curves are in adaptation.json")
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for c in curves:
        label = c.label if c.label == c.variant else f"{c.label} ({c.variant})"
        ax.plot(c.steps, c.bpb, marker="o", markersize=3, label=label)
    ax.set_xlabel("adaptation step")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(f"Plasticity on '{name}': fresh embedding, body {'frozen' if settings.freeze_body else 'trained'}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
