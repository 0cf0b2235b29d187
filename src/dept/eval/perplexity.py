"""Validation loss, perplexity per token, and bits per byte, the figure comparable across tokenizers.

What is scored: a source's validation stream is EOS, doc1, EOS, doc2, EOS, ... The evaluation takes the leading
whole documents until `max_bytes` UTF-8 bytes (or `max_documents` documents) are covered. Documents and their
bytes do not depend on the tokenizer, so every variant, whichever tokenizer it uses, scores exactly the same text.

How: the kept stream is cut into consecutive windows of `seq_len` targets (the last one shorter), so every token
after the leading EOS is predicted exactly once, with context from its own window only. Bits per byte = (sum of
those tokens' losses in nats) / ln 2 / (UTF-8 bytes those tokens stand for); the bytes come from each token's
fixed byte string (byte-level tokenizers). End-of-document tokens count 0 bytes but their loss counts: knowing
where a document ends is part of the text's information, and every tokenizer pays it once per document.

Tables that hold only some rows (TRIM and SPEC: V_k, the tokens of the source's training split) have a softmax
over V_k alone, which gives a validation token outside V_k no probability at all. It is neither free nor dropped:
`HeldRows` scores it under a proper distribution over the whole vocabulary V,

    p(t) = (1 − ε) · softmax_{V_k}(t)    for t in V_k
    p(t) = ε / |V ∖ V_k|                 for t not in V_k (an escape, then a uniform pick of the missing token)

so every token in V_k pays −ln(1 − ε) more and every missing one pays −ln ε + ln |V ∖ V_k| nats (ε =
`eval.escape_probability`); its bytes count like any other token's. As context, a missing token enters the
model as a zero vector (the table has no row for it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dept.data.tokenizer import EOS_ID
from dept.model import LanguageModel
from dept.model.lm import token_cross_entropy

_SCAN = 1 << 20  # tokens read at a time when finding document ends (the stream may be a large memmap)


@dataclass
class EvalResult:
    loss_sum: float  # nats
    tokens: int
    bytes: int
    oov_tokens: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float:
        return self.loss_sum / math.log(2) / self.bytes


def bits_per_byte(loss_sum_nats: float, n_bytes: int) -> float:
    return loss_sum_nats / math.log(2) / n_bytes


def leading_documents(tokens: np.ndarray, byte_lengths: np.ndarray, max_bytes: int,
                      max_documents: int = 0) -> tuple[int, int]:
    """(stream length, documents) of the leading whole documents that cover `max_bytes` bytes (or the whole
    stream), stopping earlier at `max_documents` when > 0. The stream starts with EOS and every document ends with
    one; the kept stream ends on the EOS of its last document."""
    documents, kept, before = 0, 1, 0  # before: bytes of the stream ahead of the current chunk
    for start in range(0, len(tokens), _SCAN):
        chunk = np.asarray(tokens[start:start + _SCAN]).astype(np.int64)
        covered = before + np.cumsum(byte_lengths[chunk])  # bytes up to and including each token
        for end in np.flatnonzero(chunk == EOS_ID) + start:
            if end == 0:
                continue
            documents, kept = documents + 1, int(end) + 1
            if covered[end - start] >= max_bytes or documents == max_documents:
                return kept, documents
        before = int(covered[-1])
    return kept, documents


@dataclass(frozen=True)
class HeldRows:
    """Scoring with a table that holds only some rows of a vocabulary of `vocab_size` (see the module doc)."""

    row_of: np.ndarray  # vocabulary id -> row of the table, -1 where the table has none
    escape: float

    @property
    def missing(self) -> int:
        return int((self.row_of < 0).sum())

    def costs(self) -> tuple[float, float]:
        """(extra nats of a held token, nats of a missing token)."""
        if self.missing == 0:
            return 0.0, math.inf
        return -math.log1p(-self.escape), -math.log(self.escape) + math.log(self.missing)


@torch.no_grad()
def evaluate_tokens(lm: LanguageModel, tokens: np.ndarray, byte_lengths: np.ndarray, seq_len: int,
                    batch_size: int, device: torch.device, autocast=None, held: HeldRows | None = None) -> EvalResult:
    """Score every token of `tokens` after the first (vocabulary ids; `held` maps them to table rows)."""
    stream = np.asarray(tokens, dtype=np.int64)
    n_pred = len(stream) - 1
    if n_pred < 1:
        raise ValueError("a validation stream needs at least two tokens")
    total_bytes = int(byte_lengths[stream[1:]].sum())
    oov = 0
    if held is not None:
        rows = held.row_of[stream]
        oov = int((rows[1:] < 0).sum())
        stream = rows
    full = n_pred // seq_len
    windows = [stream[i * seq_len: i * seq_len + seq_len + 1] for i in range(full)]
    if n_pred - full * seq_len:
        windows.append(stream[full * seq_len:])
    lm.eval()
    loss_sum, total_tokens = 0.0, 0
    for start in range(0, len(windows), batch_size):
        # Full windows batch together; the short last window goes alone.
        for batch in _same_length_batches(windows[start:start + batch_size]):
            x = torch.from_numpy(batch).to(device)
            ctx = autocast() if autocast else torch.autocast(device.type, enabled=False)
            with ctx:
                losses = _window_losses(lm, x, held)
            loss_sum += float(losses.double().sum())
            total_tokens += losses.numel()
    lm.train()
    return EvalResult(loss_sum, total_tokens, total_bytes, oov)


def _window_losses(lm: LanguageModel, windows: torch.Tensor, held: HeldRows | None) -> torch.Tensor:
    if held is None:
        return lm.token_losses(windows)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    known_in, known_out = inputs >= 0, targets >= 0
    logits = lm(inputs.clamp(min=0), known=known_in)
    losses = token_cross_entropy(logits, targets.clamp(min=0)).double()
    held_cost, missing_cost = held.costs()
    return torch.where(known_out, losses + held_cost, torch.full_like(losses, missing_cost))


def _same_length_batches(windows: list[np.ndarray]) -> list[np.ndarray]:
    by_len: dict[int, list[np.ndarray]] = {}
    for w in windows:
        by_len.setdefault(len(w), []).append(w)
    return [np.stack(ws) for ws in by_len.values()]
