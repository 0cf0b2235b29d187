"""A worker's view of the prepared data of the participants it serves: their profiles and training streams.

It reads only the prepared folder (never the raw corpus), and only the folders of the sources it is asked about,
so a site that holds one source's prepared data can serve that source alone.
"""

from __future__ import annotations

import numpy as np

from dept.algorithm.types import Mixture, Participant, Source, SourceProfile
from dept.algorithm.variants import VariantSpec
from dept.config import Config
from dept.data.prepared import GLOBAL, PreparedData
from dept.data.stream import MixtureStream, StreamPosition, WindowStream
from dept.errors import ConfigError


def row_map(held_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """Global id -> row of a table holding only `held_ids` (-1 where not held)."""
    id_map = np.full(vocab_size, -1, dtype=np.int64)
    id_map[held_ids] = np.arange(held_ids.size)
    return id_map


def participants_of(cfg: Config) -> list[Source]:
    return [Source(s.name, i) for i, s in enumerate(cfg.data.sources)]


class LocalData:
    def __init__(self, cfg: Config, spec: VariantSpec, data: PreparedData):
        self.cfg, self.spec, self.data = cfg, spec, data
        self._index = {s.name: i for i, s in enumerate(cfg.data.sources)}

    def source(self, name: str) -> Source:
        return Source(name, self._index[name])

    def profile(self, participant: Participant) -> SourceProfile:
        n_global = self.data.global_vocab_size
        if isinstance(participant, Mixture):
            return SourceProfile(participant, n_global, n_global)
        src = self.data.source(participant.name)
        vocab = n_global if self.spec.vocabulary == GLOBAL else src.vocab_size(self.spec.vocabulary)
        return SourceProfile(participant, vocab, n_global, self.spec.held_ids(src.trim_vocab()), src.unseen)

    def check_streams(self, only: list[str] | None = None) -> None:
        """Fail before any file is written if a source's prepared data cannot fill the batches it will need."""
        cfg = self.cfg
        for source in participants_of(cfg):
            if only is not None and source.name not in only:
                continue
            src_cfg = cfg.data.sources[source.index]
            src = self.data.source(source.name)
            if src.unseen != src_cfg.unseen:
                raise ConfigError(f"source '{source.name}': unseen={src_cfg.unseen} in the config but {src.unseen} "
                                  "in the prepared data: run `dept prepare` again")
            if not src_cfg.unseen:
                WindowStream(src.tokens(self.spec.vocabulary, "train"), cfg.train.seq_len,
                             1 if self.spec.baseline else cfg.train.batch_size, 0, 0, source.name)
            elif cfg.eval.unseen_adapt_steps:  # adapted before evaluation: needs batches too
                WindowStream(src.tokens(self.spec.vocabulary, "train"), cfg.train.seq_len, cfg.train.batch_size,
                             0, 0, source.name)

    def window_stream(self, source: Source, batch_size: int, held_ids: np.ndarray | None) -> WindowStream:
        src = self.data.source(source.name)
        id_map = None if held_ids is None else row_map(held_ids, src.vocab_size(GLOBAL))
        return WindowStream(src.tokens(self.spec.vocabulary, "train"), self.cfg.train.seq_len, batch_size,
                            self.cfg.run.seed, source.index, source.name, id_map)

    def train_stream(self, profile: SourceProfile, positions: dict[str, StreamPosition], mixture_step: int = 0):
        """The participant's training batches, from where its last round left them."""
        t = self.cfg.train
        participant = profile.participant
        if isinstance(participant, Source):
            stream = self.window_stream(participant, t.batch_size, profile.held_ids)
            stream.seek(positions.get(participant.name, StreamPosition()))
            return stream
        sources = [self.source(n) for n in participant.sources]
        streams = [self.window_stream(s, 1, None) for s in sources]
        for s, stream in zip(sources, streams, strict=True):
            stream.seek(positions.get(s.name, StreamPosition()))
        counts = [self.data.source(s.name).n_tokens(GLOBAL, "train") for s in sources]
        batch = self.cfg.std_batch_size
        mix = MixtureStream(streams, MixtureStream.temperature_weights(counts, t.std_temperature), batch,
                            self.cfg.run.seed)
        mix.step = mixture_step
        return mix


def round_participants(cfg: Config, spec: VariantSpec) -> list[Participant]:
    """Every source (trained and unseen, for evaluation), plus the mixture that trains the STD/ACT baselines."""
    sources: list[Participant] = list(participants_of(cfg))
    if spec.baseline:
        sources.append(Mixture(tuple(s.name for s in cfg.trained_sources)))
    return sources
