"""Byte-level tokenizers: exact byte counts per token, and the temperature-balanced mixture."""

import numpy as np
import pytest

from dept.config import TokenizerKind
from dept.data.tokenizer import EOS_ID, balanced_mixture, encode_stream, token_byte_lengths, train_tokenizer

TEXTS = ["Hello world, the quick brown fox. ", "Привет, мир! Съешь же ещё этих булок. ", "你好，世界。床前明月光。",
         "مرحبا بالعالم ", "def f(x):\n    return x + 1\n"] * 30


@pytest.mark.parametrize("kind", list(TokenizerKind))
def test_token_bytes_sum_to_the_text_bytes(kind):
    tok = train_tokenizer(iter(TEXTS), kind, 320)
    lengths = token_byte_lengths(tok)
    assert tok.token_to_id("<|endoftext|>") == EOS_ID and lengths[EOS_ID] == 0
    for text in TEXTS[:5]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert lengths[ids].sum() == len(text.encode("utf-8"))
        assert tok.decode(ids) == text


def test_stream_layout_and_dtype():
    tok = train_tokenizer(iter(TEXTS), TokenizerKind.BPE, 320)
    ids = encode_stream(tok, ["ab", "cd"])
    assert ids.dtype == np.uint16
    assert ids[0] == EOS_ID and ids[-1] == EOS_ID and (ids == EOS_ID).sum() == 3


def test_mixture_shares_follow_temperature():
    big, small = ["a" * 100] * 100, ["b" * 100] * 1  # 10,000 vs 100 chars
    def shares(t):
        text = "".join(balanced_mixture([big, small], 2000, t, seed=0))
        return text.count("a") / len(text)
    assert shares(1.0) == pytest.approx(100 / 101, abs=0.01)
    assert shares(0.0) == pytest.approx(0.5, abs=0.01)  # the small source is repeated up to its share
