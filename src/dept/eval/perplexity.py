"""Validation loss, perplexity per token, and bits per byte, the figure comparable across tokenizers.

The validation stream (EOS, doc1, EOS, doc2, ...) is cut into consecutive windows of `seq_len` targets (the last
one shorter), so every token after the leading EOS is predicted exactly once, with context from its own window
only. Bits per byte = (sum of those tokens' losses in nats) / ln 2 / (UTF-8 bytes those tokens stand for); the
bytes come from each token's fixed byte string (byte-level tokenizers), so a capped stream counts exactly the text
it covers. End-of-document tokens count 0 bytes but their loss counts: knowing where a document ends is part of
the text's information, and every tokenizer pays it once per document.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dept.model import LanguageModel


@dataclass
class EvalResult:
    loss_sum: float  # nats
    tokens: int
    bytes: int

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


@torch.no_grad()
def evaluate_tokens(lm: LanguageModel, tokens: np.ndarray, byte_lengths: np.ndarray, seq_len: int,
                    max_tokens: int, batch_size: int, device: torch.device, autocast=None) -> EvalResult:
    n_pred = min(len(tokens) - 1, max_tokens)
    if n_pred < 1:
        raise ValueError("a validation stream needs at least two tokens")
    stream = np.asarray(tokens[: n_pred + 1], dtype=np.int64)
    full = n_pred // seq_len
    windows = [stream[i * seq_len: i * seq_len + seq_len + 1] for i in range(full)]
    if n_pred - full * seq_len:
        windows.append(stream[full * seq_len:])
    lm.eval()
    loss_sum = 0.0
    total_tokens = 0
    total_bytes = int(byte_lengths[stream[1:]].sum())
    for start in range(0, len(windows), batch_size):
        group = windows[start:start + batch_size]
        # Full windows batch together; the short last window goes alone.
        for batch in _same_length_batches(group):
            x = torch.from_numpy(batch).to(device)
            ctx = autocast() if autocast else torch.autocast(device.type, enabled=False)
            with ctx:
                losses = lm.token_losses(x)
            loss_sum += float(losses.double().sum())
            total_tokens += losses.numel()
    lm.train()
    return EvalResult(loss_sum, total_tokens, total_bytes)


def _same_length_batches(windows: list[np.ndarray]) -> list[np.ndarray]:
    by_len: dict[int, list[np.ndarray]] = {}
    for w in windows:
        by_len.setdefault(len(w), []).append(w)
    return [np.stack(ws) for ws in by_len.values()]
