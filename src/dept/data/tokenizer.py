"""Train and load byte-level tokenizers (HF `tokenizers`): the global one and one per source (SPEC-OPT).

Every tokenizer is byte-level (BPE or unigram over the 256 byte symbols, no normalisation), so each token id
stands for a fixed string of UTF-8 bytes and the bytes a window of tokens covers is exact: that is what makes
bits per byte computable for any slice of a token stream. Special tokens: id 0 = end of document, id 1 = unknown.
"""

from __future__ import annotations

import array
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dept.config import TokenizerKind

EOS = "<|endoftext|>"
UNK = "<unk>"
EOS_ID = 0
SPECIAL_TOKENS = [EOS, UNK]


def new_tokenizer(kind: TokenizerKind) -> Tokenizer:
    if kind == TokenizerKind.BPE:
        tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    else:
        tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterator[str], kind: TokenizerKind, vocab_size: int) -> Tokenizer:
    """Train on an iterator of texts; the 256 byte symbols are always in the vocabulary (nothing is unknown)."""
    tok = new_tokenizer(kind)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if kind == TokenizerKind.BPE:
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=alphabet, show_progress=False, min_frequency=2)
    else:
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                          unk_token=UNK, initial_alphabet=alphabet, show_progress=False,
                                          max_piece_length=16)
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.token_to_id(EOS) == EOS_ID, "end-of-document token must be id 0"
    return tok


def load_tokenizer(path: Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), from the byte-level alphabet."""
    byte_of = {ch: 1 for ch in pre_tokenizers.ByteLevel.alphabet()}
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for token, idx in tok.get_vocab().items():
        if token in SPECIAL_TOKENS:
            continue
        lengths[idx] = sum(byte_of.get(ch, len(ch.encode("utf-8"))) for ch in token)
    return lengths


def balanced_mixture(sources: Sequence[Sequence[str] | Callable[[], Sequence[str]]], total_chars: int,
                     temperature: float, seed: int, source_chars: Sequence[int] | None = None) -> Iterator[str]:
    """Documents of several sources with source k taking a share ∝ chars_k^temperature of `total_chars`.

    Small sources are repeated (whole documents, in a seeded order) up to their share, large ones cut, so the
    tokenizer sees every source in proportion to the balanced share rather than its raw size. A source may be a
    function that reads its documents when its turn comes (one source in memory at a time); `source_chars` gives
    each source's true size when its documents are only its leading ones (they must cover `total_chars`).
    """
    if source_chars is None:
        source_chars = [sum(len(d) for d in docs) for docs in sources]
    chars = np.array(source_chars, dtype=np.float64)
    shares = np.where(chars > 0, chars, 0) ** temperature
    shares = shares / shares.sum()
    rng = random.Random(seed)
    for docs, share, have in zip(sources, shares, chars, strict=True):
        budget = int(share * total_chars)
        if budget <= 0:
            continue
        docs = docs() if callable(docs) else docs
        if not docs:
            continue
        repeats = max(1, int(np.ceil(budget / have)))
        budget = min(budget, int(have * repeats))
        order = list(range(len(docs)))
        used = 0
        while used < budget:
            rng.shuffle(order)
            for i in order:
                doc = docs[i][: budget - used]
                used += len(doc)
                yield doc
                if used >= budget:
                    break


def capped(docs: Sequence[str], max_chars: int) -> Iterator[str]:
    used = 0
    for doc in docs:
        if used >= max_chars:
            return
        yield doc[: max_chars - used]
        used += min(len(doc), max_chars - used)


def token_dtype(tok: Tokenizer) -> np.dtype:
    """The narrowest unsigned type that holds every id of `tok`."""
    return np.dtype(np.uint16 if tok.get_vocab_size() <= 65535 else np.uint32)


_ARRAY_CODE = {np.dtype(np.uint16): "H", np.dtype(np.uint32): "I" if array.array("I").itemsize == 4 else "L"}


def encode_batch(tok: Tokenizer, docs: list[str]) -> list:
    """Each document's encoding, no special tokens. `encode_batch` runs on all cores with the GIL released; its
    fast form skips the character offsets, which nothing here needs."""
    encode = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    return encode(docs, add_special_tokens=False)


def pack_encodings(encodings: list, dtype: np.dtype) -> tuple[np.ndarray, list[int]]:
    """(doc1, EOS, doc2, EOS, ... as one flat array; where each document ends in it, after its EOS). The
    encodings are let go one by one as they are read (`encodings` is emptied)."""
    out = array.array(_ARRAY_CODE[np.dtype(dtype)])  # fromlist: ~5 ns a token, a tenth of numpy's conversion
    ends = []
    for i, enc in enumerate(encodings):
        out.fromlist(enc.ids)
        out.append(EOS_ID)
        ends.append(len(out))
        encodings[i] = None
    encodings.clear()
    return np.frombuffer(out, dtype=dtype), ends


def encode_stream(tok: Tokenizer, docs: Sequence[str], batch_docs: int = 512,
                  on_progress=None) -> np.ndarray:
    """EOS, doc1, EOS, doc2, EOS, ... as one flat id array (the leading EOS lets doc1's first token be scored)."""
    dtype = token_dtype(tok)
    parts: list[np.ndarray] = [np.array([EOS_ID], dtype=dtype)]
    for start in range(0, len(docs), batch_docs):
        chunk = list(docs[start:start + batch_docs])
        parts.append(pack_encodings(encode_batch(tok, chunk), dtype)[0])
        if on_progress is not None:
            on_progress(len(chunk), sum(len(d.encode("utf-8")) for d in chunk))
    return np.concatenate(parts)
