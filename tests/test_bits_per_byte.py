"""Bits per byte against hand-computed values."""

import math

import numpy as np
import pytest
import torch

from dept.config import ModelConfig
from dept.eval import perplexity
from dept.eval.perplexity import HeldRows, bits_per_byte, evaluate_tokens, leading_documents
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
    res = evaluate_tokens(uniform_model(vocab), tokens, lengths, seq_len=4, batch_size=2, device=torch.device("cpu"))
    covered = lengths[tokens[1:]].sum()  # 3+1+2+0+4+1+2+0+1+1 = 15 bytes
    assert covered == 15 and res.tokens == 10 and res.bytes == 15
    assert res.loss == pytest.approx(math.log(8), rel=1e-6)
    assert res.bits_per_byte == pytest.approx(10 * 3 / 15, rel=1e-6)  # 2 bits per byte
    assert res.perplexity == pytest.approx(8.0, rel=1e-5)


LENGTHS = np.array([0, 1, 2, 3, 1, 1, 2, 4])
STREAM = np.array([0, 3, 1, 0, 7, 5, 6, 0, 4, 4, 0])  # documents of 3+1=4, 4+1+2=7 and 1+1=2 bytes


@pytest.mark.parametrize("max_bytes,max_documents,expected", [
    (1, 0, (4, 1)), (4, 0, (4, 1)), (5, 0, (8, 2)), (11, 0, (8, 2)), (12, 0, (11, 3)), (10**9, 0, (11, 3)),
    (10**9, 2, (8, 2)), (5, 1, (4, 1)),
])
def test_the_cap_keeps_leading_whole_documents(max_bytes, max_documents, expected):
    assert leading_documents(STREAM, LENGTHS, max_bytes, max_documents) == expected


def test_the_cap_is_the_same_when_documents_span_read_chunks(monkeypatch):
    rng = np.random.default_rng(1)
    stream = np.concatenate([[0]] + [np.append(rng.integers(1, 8, size=rng.integers(1, 9)), 0) for _ in range(40)])
    whole = [leading_documents(stream, LENGTHS, b) for b in range(1, 400, 7)]
    monkeypatch.setattr(perplexity, "_SCAN", 3)
    assert [leading_documents(stream, LENGTHS, b) for b in range(1, 400, 7)] == whole


def test_capped_stream_counts_only_the_covered_bytes():
    kept, _ = leading_documents(STREAM, LENGTHS, 5)
    res = evaluate_tokens(uniform_model(8), STREAM[:kept], LENGTHS, seq_len=4, batch_size=8,
                          device=torch.device("cpu"))
    assert res.tokens == 7 and res.bytes == 4 + 7


def test_a_token_outside_the_held_rows_pays_the_escape_and_keeps_its_bytes():
    """A table of rows {0, 1, 2, 3} of an 8-token vocabulary, uniform over its 4 rows."""
    eps = 0.01
    row_of = np.array([0, 1, 2, 3, -1, -1, -1, -1])
    tokens = np.array([0, 3, 1, 5, 0, 2, 7])  # 6 predicted: 3, 1, 5 (missing), 0, 2, 7 (missing)
    res = evaluate_tokens(uniform_model(4), tokens, LENGTHS, seq_len=4, batch_size=2, device=torch.device("cpu"),
                          held=HeldRows(row_of, eps))
    held_cost = math.log(4) - math.log(1 - eps)  # uniform over 4 rows, times (1 − ε)
    missing_cost = -math.log(eps) + math.log(4)  # ε spread evenly over the 4 missing tokens
    assert res.oov_tokens == 2 and res.tokens == 6
    assert res.loss_sum == pytest.approx(4 * held_cost + 2 * missing_cost, rel=1e-6)
    assert res.bytes == 3 + 1 + 1 + 0 + 2 + 4  # the missing tokens' bytes are counted


def test_the_escape_rule_is_a_distribution_over_the_whole_vocabulary():
    eps, held, vocab = 0.05, 5, 12
    held_cost, missing_cost = HeldRows(np.array([0] * held + [-1] * (vocab - held)), eps).costs()
    softmax = np.full(held, 1 / held)  # any softmax over the held rows
    total = (softmax * math.exp(-held_cost)).sum() + (vocab - held) * math.exp(-missing_cost)
    assert total == pytest.approx(1.0)


def test_every_token_is_predicted_once_across_windows():
    """Window boundaries neither drop nor double-count targets."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 8, size=101)
    lengths = np.ones(8, dtype=np.int64)
    for seq_len in (3, 7, 10, 100, 200):
        res = evaluate_tokens(uniform_model(8), tokens, lengths, seq_len, 4, torch.device("cpu"))
        assert res.tokens == 100 and res.bytes == 100
