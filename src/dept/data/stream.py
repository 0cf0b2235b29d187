"""Batches of training windows from packed token files, in a seeded random order that can be resumed.

A stream cuts its token array into non-overlapping windows of seq_len + 1 tokens (input and shifted target) and
visits them in a permutation drawn from (seed, stream id, epoch). Its whole state is (epoch, cursor), so a
checkpoint stores two integers and a resumed run reads exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dept.errors import DataError


def share_rows(batch_size: int, share: tuple[int, int] | None) -> tuple[int, int]:
    """The [start, stop) rows of a batch that a share (index, parts) covers: equal shares."""
    if share is None:
        return 0, batch_size
    index, parts = share
    rows = batch_size // parts
    return index * rows, (index + 1) * rows


@dataclass
class StreamPosition:
    epoch: int = 0
    cursor: int = 0


class WindowStream:
    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, stream_id: int,
                 name: str, id_map: np.ndarray | None = None):
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.stream_id = stream_id
        self.id_map = id_map  # TRIM: global id -> row of the source's table
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < batch_size:
            raise DataError(f"source '{name}': too little text for one batch: {len(tokens)} tokens give "
                            f"{self.n_windows} windows of {seq_len + 1}, batch_size is {batch_size}")
        self.position = StreamPosition()
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.stream_id, epoch]).permutation(self.n_windows)

    def seek(self, position: StreamPosition) -> None:
        self.position = StreamPosition(position.epoch, position.cursor)
        self._order = self._permutation(self.position.epoch)

    def next_windows(self, count: int, wanted: np.ndarray | None = None) -> np.ndarray:
        """The next `count` windows; with `wanted` (a bool per window) only those, though the stream moves past
        all `count` (data-parallel replicas each read their own rows of the same batch)."""
        rows = []
        for j in range(count):
            if self.position.cursor >= self.n_windows:
                self.seek(StreamPosition(self.position.epoch + 1, 0))
            if wanted is None or wanted[j]:
                start = int(self._order[self.position.cursor]) * self.seq_len
                rows.append(np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int64))
            self.position.cursor += 1
        out = np.stack(rows) if rows else np.empty((0, self.seq_len + 1), dtype=np.int64)
        if self.id_map is not None:
            out = self.id_map[out]
        return out

    def next_batch(self, share: tuple[int, int] | None = None) -> torch.Tensor:
        """The next batch, or (`share` = (index, parts)) the rows of it that replica `index` of `parts` trains."""
        if share is None:
            return torch.from_numpy(self.next_windows(self.batch_size))
        start, stop = share_rows(self.batch_size, share)
        wanted = np.zeros(self.batch_size, dtype=bool)
        wanted[start:stop] = True
        return torch.from_numpy(self.next_windows(self.batch_size, wanted))


class MixtureStream:
    """STD/ACT: every sequence of a batch comes from source k with probability p_k ∝ tokens_k^τ.

    The source choices for step s are drawn from (seed, s) alone, so the only state is each source's position
    and the step counter.
    """

    def __init__(self, streams: list[WindowStream], weights: np.ndarray, batch_size: int, seed: int):
        self.streams = streams
        self.probs = weights / weights.sum()
        self.batch_size = batch_size
        self.seed = seed
        self.step = 0

    @staticmethod
    def temperature_weights(token_counts: list[int], temperature: float) -> np.ndarray:
        return np.asarray(token_counts, dtype=np.float64) ** temperature

    def next_batch(self, share: tuple[int, int] | None = None) -> torch.Tensor:
        """The next mixed batch, or (`share`) replica `index`'s rows of it; every source's stream moves past
        all of its rows either way."""
        rng = np.random.default_rng([self.seed, 1_000_003, self.step])
        picks = rng.choice(len(self.streams), size=self.batch_size, p=self.probs)
        self.step += 1
        start, stop = share_rows(self.batch_size, share)
        rows = np.empty((stop - start, self.streams[0].seq_len + 1), dtype=np.int64)
        for k in np.unique(picks):
            idx = np.nonzero(picks == k)[0]
            if share is None:
                rows[idx] = self.streams[k].next_windows(len(idx))
                continue
            wanted = (idx >= start) & (idx < stop)
            rows[idx[wanted] - start] = self.streams[k].next_windows(len(idx), wanted)
        return torch.from_numpy(rows)
