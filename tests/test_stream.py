"""Seeded, resumable token streams and the STD temperature mixture."""

import numpy as np
import pytest

from dept.data.stream import MixtureStream, StreamPosition, WindowStream
from dept.errors import DataError


def test_windows_are_seeded_and_resumable():
    tokens = np.arange(1000, dtype=np.uint16)
    a = WindowStream(tokens, 9, 4, seed=3, stream_id=1, name="s")
    first = [a.next_windows(4) for _ in range(40)]  # > one epoch (111 windows)
    b = WindowStream(tokens, 9, 4, seed=3, stream_id=1, name="s")
    for _ in range(17):
        b.next_windows(4)
    c = WindowStream(tokens, 9, 4, seed=3, stream_id=1, name="s")
    c.seek(StreamPosition(b.position.epoch, b.position.cursor))
    for i in range(17, 40):
        assert np.array_equal(c.next_windows(4), first[i])


def test_an_epoch_visits_every_window_once():
    tokens = np.arange(101, dtype=np.uint16)
    s = WindowStream(tokens, 10, 1, seed=0, stream_id=0, name="s")
    starts = sorted(int(s.next_windows(1)[0, 0]) for _ in range(10))
    assert starts == list(range(0, 100, 10))
    w = s.next_windows(1)[0]
    assert np.array_equal(w, np.arange(w[0], w[0] + 11))


def test_too_little_text_for_one_batch():
    with pytest.raises(DataError, match="too little text for one batch"):
        WindowStream(np.arange(30, dtype=np.uint16), 10, 4, 0, 0, "tiny")


def test_mixture_follows_temperature_probabilities():
    weights = MixtureStream.temperature_weights([1000, 10], 1.0)
    assert np.allclose(weights / weights.sum(), [1000 / 1010, 10 / 1010])
    assert np.allclose(MixtureStream.temperature_weights([1000, 10], 0.0), [1, 1])
    streams = [WindowStream(np.full(5000, k, dtype=np.uint16), 4, 1, 0, k, f"s{k}") for k in range(2)]
    mix = MixtureStream(streams, np.array([3.0, 1.0]), batch_size=50, seed=0)
    counts = np.zeros(2)
    for _ in range(40):
        batch = mix.next_batch().numpy()
        counts += [(batch[:, 0] == 0).sum(), (batch[:, 0] == 1).sum()]
    assert counts[0] / counts.sum() == pytest.approx(0.75, abs=0.03)
