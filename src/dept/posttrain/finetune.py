"""Fine-tune a model folder on a labelled text set: classification or regression (Radford et al. 2018 style).

Input of one example: `encode(text) [+ EOS + encode(text_pair)] + EOS`; the final EOS (id 0) is the classify
token. The sequence keeps its last `max_len` tokens, so a long text loses its beginning first. Batches are padded
on the right and the body's final hidden state (after its final norm) at each example's last real token feeds a
linear head (`nn.Linear(d_model, n_classes or 1)`, bias, N(0, 0.02) weights, zero bias). Attention is causal, so
padding after that token cannot change it.

Every parameter trains (body, token table, head) with AdamW: linear warm-up over the first 10% of the steps, then
linear decay to 0, gradient clipping at 1.0, weight decay 0.01 on matrices. `lr` (default 1e-4, for a pre-trained
body: Radford et al. used 6.25e-5) drives the body and the token table; the head, which starts from nothing, uses
`head_lr` (10 × `lr` unless given; on the bundled Rotten Tomatoes set a random-init tiny model reached 0.666 eval
accuracy with it against 0.654 with the head at `lr`). `freeze_body` keeps the transformer body fixed (the token
table and the head still train); with `freeze_embedding` as well only the head trains (a linear probe).

Regression trains on standardised targets ((y − mean) / std of the training labels) so one learning rate suits
any scale; the saved head has the de-standardisation folded in (weight · std, bias · std + mean), so it outputs
labels in their own units. Every eval metric, and every prediction, goes through that folded head.

After each epoch (and once before training: the untrained head, "epoch 0") the eval file is scored:
classification: accuracy, macro-F1 over the training label set (a class's F1 is 0 when precision + recall is 0,
which includes a class with no predictions and no eval support), and the accuracy of always answering the
training set's majority label; regression: Pearson, Spearman (Pearson of average ranks, ties share their mean
rank) and MSE, and the MSE of always answering the training mean. The final metrics are the last epoch's: the
eval set only reports, it never selects a model.

All randomness (head initialisation, data order) comes from generators seeded with `seed`; the global torch RNG
is neither used nor touched. With the same seed, data, settings, device and thread count the result is identical.

Reading data: CSV (header row, UTF-8) or JSONL, fields `text` (required), `text_pair` (optional) and `label`
(required). Every problem is a one-line `DataError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dept.algorithm.runtime import resolve_device
from dept.atomic_io import write_json_atomic
from dept.data.tokenizer import EOS_ID
from dept.errors import DataError, DeptError, TrainingError
from dept.model import LanguageModel
from dept.posttrain.folder import ModelFolder, is_model_folder

TASKS = ("auto", "classification", "regression")
MAX_CLASSES_AS_NUMBERS = 20  # more distinct numeric labels than this: auto picks regression
HEAD_INIT_STD = 0.02
WARMUP_FRACTION = 0.1
GRAD_CLIP = 1.0
WEIGHT_DECAY = 0.01  # on matrices only (not on norm gains or the head's bias)
BETAS = (0.9, 0.999)
EVAL_BATCH = 64  # scoring batch: training-time eval and `predict` use the same batches, so the same outputs
METRICS = "metrics.json"


# ---------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Example:
    text: str
    label: str  # as written (a JSON number becomes its JSON spelling); parsed as a float for regression
    text_pair: str | None = None
    line: int = 0  # where it is in its file (CSV: the line the row ends on), for messages


def _label_string(value, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return value.strip()
    raise DataError(f"{where}: label must be a string or a number, not {type(value).__name__}")


def _example(fields: dict, path: Path, line: int, kind: str) -> Example:
    where = f"{path} {kind} {line}"
    text = fields.get("text")
    if text is None:
        raise DataError(f"{where}: no text")
    if not isinstance(text, str):
        raise DataError(f"{where}: text must be a string, not {type(text).__name__}")
    if not text.strip():
        raise DataError(f"{where}: empty text")
    pair = fields.get("text_pair")
    if pair is not None and not isinstance(pair, str):
        raise DataError(f"{where}: text_pair must be a string, not {type(pair).__name__}")
    label = fields.get("label")
    label = None if label is None else _label_string(label, where)
    if not label:
        raise DataError(f"{where}: missing label")
    return Example(text=text, label=label, text_pair=pair, line=line)


def _read_csv(path: Path, content: str) -> list[Example]:
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        columns = reader.fieldnames
        if not columns:
            raise DataError(f"{path}: empty file (expected a header row with text and label columns)")
        columns = [c.strip() for c in columns]
        reader.fieldnames = columns
        for name in ("text", "label"):
            if name not in columns:
                raise DataError(f"{path}: no '{name}' column in the header (columns: {', '.join(columns)})")
        out = [_example(row, path, reader.line_num, "line") for row in reader]
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num}: not valid CSV ({err})") from None
    if not out:
        raise DataError(f"{path}: no examples (only a header row)")
    return out


def _read_jsonl(path: Path, content: str) -> list[Example]:
    out = []
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {n}: invalid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {n}: expected a JSON object with text and label fields")
        if "text" not in obj:
            raise DataError(f"{path} line {n}: no 'text' field")
        if "label" not in obj:
            raise DataError(f"{path} line {n}: no 'label' field")
        out.append(_example(obj, path, n, "line"))
    if not out:
        raise DataError(f"{path}: empty file (no examples)")
    return out


def read_examples(path: Path) -> list[Example]:
    """The examples of a local .csv (header row) or .jsonl file; a `DataError` naming file and line if not."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise DataError(f"{path}: unknown file type '{path.suffix}' (use .csv with a header row, or .jsonl)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (byte {err.start})") from None
    if not content.strip():
        raise DataError(f"{path}: empty file")
    return _read_csv(path, content) if suffix == ".csv" else _read_jsonl(path, content)


def _number(label: str) -> float | None:
    try:
        value = float(label)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def detect_task(labels: Sequence[str]) -> str:
    """Regression when every label is a number and one is not whole, or there are >20 distinct numbers."""
    values = [_number(x) for x in labels]
    if not values or any(v is None for v in values):
        return "classification"
    if any(not float(v).is_integer() for v in values) or len(set(values)) > MAX_CLASSES_AS_NUMBERS:
        return "regression"
    return "classification"


def _numbers(examples: Sequence[Example], path: Path) -> list[float]:
    out = []
    for ex in examples:
        value = _number(ex.label)
        if value is None:
            raise DataError(f"{path} line {ex.line}: label {ex.label!r} is not a number (the task is regression)")
        out.append(value)
    return out


# ---------------------------------------------------------------------------------------------------- metrics


def accuracy(predicted: Sequence, gold: Sequence) -> float:
    if len(predicted) != len(gold) or not gold:
        raise ValueError("accuracy needs two non-empty lists of the same length")
    return float(np.mean(np.asarray(predicted, dtype=object) == np.asarray(gold, dtype=object)))


def macro_f1(predicted: Sequence, gold: Sequence, labels: Sequence) -> float:
    """Mean over `labels` of each class's F1. F1 = 2PR/(P+R), and 0 when P+R = 0 (a class never predicted
    correctly, including one with no predictions and no support: it still counts in the mean)."""
    if len(predicted) != len(gold) or not labels:
        raise ValueError("macro_f1 needs lists of the same length and at least one label")
    pred, true = np.asarray(predicted, dtype=object), np.asarray(gold, dtype=object)
    scores = []
    for c in labels:
        tp = int(np.sum((pred == c) & (true == c)))
        n_pred, n_true = int(np.sum(pred == c)), int(np.sum(true == c))
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return float(np.mean(scores))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant (the correlation is undefined)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError("pearson needs two 1-D sequences of the same length (at least 2)")
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denom if denom > 0 else float("nan")


def average_ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    ranks = np.empty(a.size, dtype=np.float64)
    sorted_a = a[order]
    i = 0
    while i < a.size:
        j = i
        while j + 1 < a.size and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def mse(x: Sequence[float], y: Sequence[float]) -> float:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.mean((a - b) ** 2))


# ---------------------------------------------------------------------------------------------------- model


def encode_examples(folder: ModelFolder, texts: Sequence[str], pairs: Sequence[str | None] | None,
                    max_len: int) -> list[list[int]]:
    """ids = encode(text) [+ EOS + encode(pair)] + EOS, keeping the last `max_len` tokens."""
    if max_len < 2:
        raise DeptError(f"max_len {max_len} is too short (an example needs at least 2 tokens)")
    enc = folder.tokenizer.encode_batch(list(texts), add_special_tokens=False)
    pairs = list(pairs) if pairs is not None else [None] * len(texts)
    pair_ids = {i: e.ids for i, e in zip(
        [i for i, p in enumerate(pairs) if p is not None],
        folder.tokenizer.encode_batch([p for p in pairs if p is not None], add_special_tokens=False),
        strict=True)}
    out = []
    for i, e in enumerate(enc):
        ids = list(e.ids)
        if i in pair_ids:
            ids += [EOS_ID] + pair_ids[i]
        ids.append(EOS_ID)
        out.append(ids[-max_len:])
    return out


def _collate(seqs: Sequence[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = torch.full((len(seqs), int(lengths.max())), EOS_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return ids.to(device), lengths.to(device)


def pooled(lm: LanguageModel, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Final hidden state (after the final norm) at each row's last real token; rows right-padded: (B, d_model)."""
    h = lm.body(lm.embedding.embed(ids))
    return h[torch.arange(ids.shape[0], device=ids.device), lengths - 1]


@torch.no_grad()
def _outputs(lm: LanguageModel, weight: torch.Tensor, bias: torch.Tensor, seqs: Sequence[list[int]],
             device: torch.device) -> torch.Tensor:
    """Head outputs (N, n_out) on the CPU, scored in fixed batches of EVAL_BATCH in length order."""
    was_training = lm.training
    lm.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), weight.shape[0])
    for start in range(0, len(order), EVAL_BATCH):
        idx = order[start: start + EVAL_BATCH]
        ids, lengths = _collate([seqs[i] for i in idx], device)
        out[idx] = F.linear(pooled(lm, ids, lengths), weight, bias).float().cpu()
    lm.train(was_training)
    return out


def _decide(outputs: torch.Tensor, task: str, labels: Sequence[str]) -> list:
    if task == "regression":
        return [float(v) for v in outputs[:, 0].tolist()]
    return [labels[i] for i in outputs.argmax(dim=1).tolist()]


# ---------------------------------------------------------------------------------------------------- fine-tuning


@dataclass
class EpochMetrics:
    epoch: int  # 0 = before training (the untrained head)
    train_loss: float | None  # mean training loss over the epoch (standardised units for regression)
    metrics: dict[str, float]


@dataclass
class FinetuneResult:
    task: str  # classification or regression
    labels: list[str]  # the classes in head order (empty for regression)
    epochs: list[EpochMetrics]  # epoch 0 (untrained head) then one per epoch
    baseline: dict  # majority label and its eval accuracy, or the training mean and its eval MSE
    settings: dict
    predictions: list = field(repr=False, default_factory=list)  # the final model's eval predictions
    out: Path | None = None
    seconds: float = 0.0

    @property
    def final(self) -> dict[str, float]:
        return self.epochs[-1].metrics

    def to_json(self) -> dict:
        return _jsonable({"task": self.task, "labels": self.labels, "final": self.final, "baseline": self.baseline,
                          "epochs": [asdict(e) for e in self.epochs], "settings": self.settings,
                          "seconds": round(self.seconds, 3)})


def _jsonable(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier for optimiser step `step` (0-based): linear warm-up, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _format(metrics: dict[str, float]) -> str:
    names = {"accuracy": "accuracy", "macro_f1": "macro-F1", "pearson": "Pearson", "spearman": "Spearman",
             "mse": "MSE"}
    return "  ".join(f"{label} {metrics[k]:.4f}" for k, label in names.items() if k in metrics)


def finetune(model: ModelFolder, train_path: Path, eval_path: Path, out: Path | None = None, *,
             task: str = "auto", epochs: int = 3, lr: float = 1e-4, head_lr: float | None = None,
             batch_size: int = 16, max_len: int | None = None, seed: int = 0, freeze_body: bool = False,
             freeze_embedding: bool = False, weight_decay: float = WEIGHT_DECAY,
             log: Callable[[str], None] | None = print, device: str | torch.device = "cpu") -> FinetuneResult:
    """Fine-tune `model` with a new head on `train_path`, score `eval_path` after every epoch, and (if `out` is
    given) save the fine-tuned model folder (head in `extra`) with `metrics.json` in it."""
    started = time.perf_counter()
    log = log or (lambda _line: None)
    if task not in TASKS:
        raise DeptError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    if epochs < 1 or batch_size < 1 or not 0 < lr < math.inf or (head_lr is not None and not 0 < head_lr < math.inf):
        raise DeptError("epochs and batch size must be at least 1 and learning rates positive (and finite)")
    if not -2**63 <= seed < 2**64:
        raise DeptError(f"--seed {seed}: out of range (a 64-bit integer)")
    max_len = max_len if max_len is not None else min(model.model.max_seq_len, 128)
    if not 2 <= max_len <= model.model.max_seq_len:
        raise DeptError(f"max_len {max_len} must be between 2 and the model's max_seq_len "
                        f"{model.model.max_seq_len}")
    head_lr = head_lr if head_lr is not None else 10 * lr
    if out is not None:
        out = Path(out)
        if out.exists() and not is_model_folder(out) and (not out.is_dir() or any(out.iterdir())):
            raise DeptError(f"{out} exists and is not a dept model folder: choose another output folder")
    train_path, eval_path = Path(train_path), Path(eval_path)
    train, evals = read_examples(train_path), read_examples(eval_path)

    if task == "auto":
        task = detect_task([ex.label for ex in train])
    if task == "classification":
        labels = sorted({ex.label for ex in train})
        if len(labels) < 2:
            raise DataError(f"{train_path}: every example has label {labels[0]!r}; classification needs at least "
                            "two labels")
        index = {c: i for i, c in enumerate(labels)}
        for ex in evals:
            if ex.label not in index:
                shown = ", ".join(repr(c) for c in labels[:10]) + (", ..." if len(labels) > 10 else "")
                raise DataError(f"{eval_path} line {ex.line}: label {ex.label!r} is not a training label ({shown}); "
                                "mislabelled, or a class the training file lacks")
        targets = torch.tensor([index[ex.label] for ex in train], dtype=torch.long)
        gold: list = [ex.label for ex in evals]
        counts = Counter(ex.label for ex in train)
        majority = max(labels, key=lambda c: (counts[c], -index[c]))  # ties: the first in label order
        baseline = {"majority_label": majority, "accuracy": accuracy([majority] * len(gold), gold)}
        mean, std, n_out = 0.0, 1.0, len(labels)
    else:
        labels = []
        values = _numbers(train, train_path)
        gold = _numbers(evals, eval_path)
        mean, std = float(np.mean(values)), float(np.std(values))
        if std == 0:
            raise DataError(f"{train_path}: every label is {values[0]}; regression needs labels that vary")
        targets = torch.tensor([(v - mean) / std for v in values], dtype=torch.float32)
        baseline = {"mean": mean, "mse": mse([mean] * len(gold), gold)}
        n_out = 1

    def score(predictions: list) -> dict[str, float]:
        if task == "classification":
            return {"accuracy": accuracy(predictions, gold), "macro_f1": macro_f1(predictions, gold, labels),
                    "majority_accuracy": baseline["accuracy"]}
        return {"pearson": pearson(predictions, gold), "spearman": spearman(predictions, gold),
                "mse": mse(predictions, gold), "mean_mse": baseline["mse"]}

    device = resolve_device(str(device))
    train_seqs = encode_examples(model, [ex.text for ex in train], [ex.text_pair for ex in train], max_len)
    eval_seqs = encode_examples(model, [ex.text for ex in evals], [ex.text_pair for ex in evals], max_len)
    lm = model.language_model(device).train()
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(model.model.d_model, n_out)
    with torch.no_grad():
        head.weight.copy_(torch.empty(head.weight.shape).normal_(0.0, HEAD_INIT_STD, generator=gen))
        head.bias.zero_()
    head.to(device)

    def folded() -> tuple[torch.Tensor, torch.Tensor]:
        """The head in label units: what is scored and saved (identity for classification)."""
        with torch.no_grad():
            if task == "classification":
                return head.weight.detach().clone(), head.bias.detach().clone()
            return head.weight * std, head.bias * std + mean

    for p in lm.body.parameters():
        p.requires_grad_(not freeze_body)
    for p in lm.embedding.parameters():
        p.requires_grad_(not freeze_embedding)
    lm_params = [p for p in lm.parameters() if p.requires_grad]
    groups = [{"params": [p for p in lm_params if p.dim() >= 2], "lr": lr, "weight_decay": weight_decay},
              {"params": [p for p in lm_params if p.dim() < 2], "lr": lr, "weight_decay": 0.0},
              {"params": [head.weight], "lr": head_lr, "weight_decay": weight_decay},
              {"params": [head.bias], "lr": head_lr, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["peak_lr"] = g["lr"]
    optimizer = torch.optim.AdamW(groups, betas=BETAS, eps=1e-8)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = epochs * steps_per_epoch
    warmup = max(1, round(WARMUP_FRACTION * total))
    trainable = [p for g in groups for p in g["params"]]

    settings = {"task": task, "train": str(train_path), "eval": str(eval_path), "train_examples": len(train),
                "eval_examples": len(evals), "epochs": epochs, "lr": lr, "head_lr": head_lr,
                "batch_size": batch_size, "max_len": max_len, "seed": seed, "freeze_body": freeze_body,
                "freeze_embedding": freeze_embedding, "weight_decay": weight_decay, "betas": list(BETAS),
                "warmup_fraction": WARMUP_FRACTION, "warmup_steps": warmup, "steps": total, "grad_clip": GRAD_CLIP,
                "head_init_std": HEAD_INIT_STD, "device": str(device)}
    log(f"fine-tuning ({task}, {n_out if task == 'classification' else 'one'} output"
        f"{'s' if n_out > 1 else ''}): {len(train)} training and {len(evals)} eval examples, {epochs} epoch"
        f"{'s' if epochs != 1 else ''} of {steps_per_epoch} steps, lr {lr:g} (head {head_lr:g})")
    base_line = (f"majority {baseline['accuracy']:.4f}" if task == "classification"
                 else f"predicting the mean: MSE {baseline['mse']:.4f}")

    def evaluate() -> tuple[dict[str, float], list]:
        weight, bias = folded()
        predictions = _decide(_outputs(lm, weight, bias, eval_seqs, device), task, labels)
        return score(predictions), predictions

    metrics, predictions = evaluate()
    history = [EpochMetrics(0, None, metrics)]
    log(f"epoch 0/{epochs} (untrained head)  eval {_format(metrics)}  ({base_line})")
    step = 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(train), generator=gen).tolist()
        losses = []
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            for g in optimizer.param_groups:
                g["lr"] = g["peak_lr"] * _lr_factor(step, total, warmup)
            ids, lengths = _collate([train_seqs[i] for i in idx], device)
            out_ = head(pooled(lm, ids, lengths)).float()
            target = targets[idx].to(device)
            loss = F.cross_entropy(out_, target) if task == "classification" else F.mse_loss(out_[:, 0], target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            step += 1
        train_loss = float(torch.stack(losses).mean())
        metrics, predictions = evaluate()
        history.append(EpochMetrics(epoch, train_loss, metrics))
        log(f"epoch {epoch}/{epochs}  train loss {train_loss:.4f}  eval {_format(metrics)}  ({base_line})")

    if not all(bool(p.isfinite().all()) for p in [*lm.parameters(), *head.parameters()]):
        raise TrainingError(f"fine-tuning diverged: the weights are not finite after {epochs} epoch(s) at lr {lr:g}, "
                            f"head lr {head_lr:g}: lower --lr / --head-lr")
    result = FinetuneResult(task, labels, history, baseline, settings, predictions, out)
    if out is not None:
        weight, bias = folded()
        lm.eval()
        origin = {"kind": "finetuned", "from": model.origin, "task": task, "labels": labels, "max_len": max_len}
        tuned = ModelFolder(model.model, {k: v.detach().cpu() for k, v in lm.body.state_dict().items()},
                            {k: v.detach().cpu() for k, v in lm.embedding.tensors().items()}, model.tokenizer,
                            origin, {"head.weight": weight.cpu(), "head.bias": bias.cpu()})
        tuned.save(out)
        result.seconds = time.perf_counter() - started
        write_json_atomic(out / METRICS, result.to_json())
        log(f"saved the fine-tuned model to {out}")
    result.seconds = time.perf_counter() - started
    return result


# ---------------------------------------------------------------------------------------------------- using one


def _classifier_parts(folder: ModelFolder) -> tuple[str, list[str], torch.Tensor, torch.Tensor]:
    origin = folder.origin or {}
    task, labels = origin.get("task"), list(origin.get("labels") or [])
    weight, bias = folder.extra.get("head.weight"), folder.extra.get("head.bias")
    if origin.get("kind") != "finetuned" or task not in ("classification", "regression") or weight is None \
            or bias is None:
        raise DeptError("not a fine-tuned model folder (no task or head): fine-tune one with dept finetune")
    n_out = len(labels) if task == "classification" else 1
    if tuple(weight.shape) != (n_out, folder.model.d_model) or tuple(bias.shape) != (n_out,):
        raise DeptError(f"the fine-tuned head has shape {tuple(weight.shape)}, expected ({n_out}, "
                        f"{folder.model.d_model}) for a {task} task with {len(labels)} labels")
    return task, labels, weight, bias


def load_classifier(path: Path) -> tuple[ModelFolder, list[str], str]:
    """A saved fine-tuned model folder, its labels (head order; empty for regression) and its task."""
    folder = ModelFolder.load(Path(path))
    task, labels, _, _ = _classifier_parts(folder)
    return folder, labels, task


def predict(folder: ModelFolder, texts: Sequence[str], text_pairs: Sequence[str | None] | None = None, *,
            max_len: int | None = None, device: str | torch.device = "cpu") -> list:
    """Labels (classification) or numbers (regression) a fine-tuned folder gives `texts` (with `text_pairs`)."""
    task, labels, weight, bias = _classifier_parts(folder)
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise DeptError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
    if not texts:
        return []
    max_len = max_len or folder.origin.get("max_len") or min(folder.model.max_seq_len, 128)
    device = torch.device(device)
    seqs = encode_examples(folder, texts, text_pairs, max_len)
    lm = folder.language_model(device)
    return _decide(_outputs(lm, weight.to(device), bias.to(device), seqs, device), task, labels)
