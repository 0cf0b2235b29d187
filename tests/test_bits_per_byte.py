"""Bits per byte against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from dept.config import ModelConfig
from dept.eval.perplexity import bits_per_byte, evaluate_tokens
from dept.model import Body, LanguageModel, SourceEmbedding


def uniform_model(vocab: int) -> LanguageModel:
    cfg = ModelConfig(d_model=8, n_layers=1, n_heads=2, max_seq_len=256)
    body = Body(cfg)
    body.reset_parameters(torch.Generator().manual_seed(0))
    emb = SourceEmbedding(vocab, cfg)
    torch.nn.init.zeros_(emb.tokens.weight)  # all logits 0: every token costs ln(vocab) nats
    return LanguageModel(body, emb)


def test_bits_per_byte_formula():
    # 10 tokens, 2.0794 nats each (ln 8), covering 15 bytes: 10·3 bits / 15 bytes = 2 bits per byte
    assert bits_per_byte(10 * math.log(8), 15) == pytest.approx(2.0)


def test_uniform_model_on_a_hand_built_stream():
    vocab = 8
    lengths = np.array([0, 1, 2, 3, 1, 1, 2, 4])  # bytes each token id stands for (id 0 = end of document)
    tokens = np.array([0, 3, 1, 2, 0, 7, 5, 6, 0, 4, 4])  # 10 predicted tokens
    res = evaluate_tokens(uniform_model(vocab), tokens, lengths, seq_len=4, max_tokens=100, batch_size=2,
                          device=torch.device("cpu"))
    covered = lengths[tokens[1:]].sum()  # 3+1+2+0+4+1+2+0+1+1 = 15 bytes
    assert covered == 15 and res.tokens == 10 and res.bytes == 15
    assert res.loss == pytest.approx(math.log(8), rel=1e-6)
    assert res.bits_per_byte == pytest.approx(10 * 3 / 15, rel=1e-6)  # 2 bits per byte
    assert res.perplexity == pytest.approx(8.0, rel=1e-5)


def test_capped_stream_counts_only_the_covered_bytes():
    lengths = np.array([0, 1, 2, 3, 1, 1, 2, 4])
    tokens = np.array([0, 3, 1, 2, 0, 7, 5, 6, 0, 4, 4])
    res = evaluate_tokens(uniform_model(8), tokens, lengths, seq_len=4, max_tokens=5, batch_size=8,
                          device=torch.device("cpu"))
    assert res.tokens == 5 and res.bytes == 3 + 1 + 2 + 0 + 4


def test_every_token_is_predicted_once_across_windows():
    """Window boundaries neither drop nor double-count targets."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 8, size=101)
    lengths = np.ones(8, dtype=np.int64)
    for seq_len in (3, 7, 10, 100, 200):
        res = evaluate_tokens(uniform_model(8), tokens, lengths, seq_len, 10_000, 4, torch.device("cpu"))
        assert res.tokens == 100 and res.bytes == 100
