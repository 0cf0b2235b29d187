"""Bits per byte of a model folder on a token stream: the same rule as pre-training's evaluation
(`eval.perplexity`: the leading whole documents up to a byte cap, every token after the first EOS scored once)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from dept.algorithm.runtime import autocast_context
from dept.data.tokenizer import encode_stream, token_byte_lengths
from dept.eval.perplexity import EvalResult, evaluate_tokens, leading_documents
from dept.model import LanguageModel


def score_stream(lm: LanguageModel, tokens: np.ndarray, byte_lengths: np.ndarray, seq_len: int, max_bytes: int,
                 max_documents: int = 0, batch_size: int = 16, precision: str = "fp32") -> tuple[EvalResult, int]:
    """(result, documents) over the leading whole documents of an EOS-separated stream."""
    device = next(lm.parameters()).device
    kept, documents = leading_documents(tokens, byte_lengths, max_bytes, max_documents)
    was_training = lm.training
    res = evaluate_tokens(lm, tokens[:kept], byte_lengths, seq_len, batch_size, device,
                          functools.partial(autocast_context, device, precision))
    lm.train(was_training)
    return res, documents


def score_documents(lm: LanguageModel, tokenizer: Tokenizer, documents: Sequence[str], seq_len: int,
                    max_bytes: int, batch_size: int = 16, precision: str = "fp32") -> tuple[EvalResult, int]:
    """Score raw documents under the model's own tokenizer (bits per byte compares across tokenizers)."""
    stream = encode_stream(tokenizer, documents)
    return score_stream(lm, stream, token_byte_lengths(tokenizer), seq_len, max_bytes, 0, batch_size, precision)

