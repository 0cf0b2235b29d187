"""Which sources train in a round: a seeded random subset drawn from (seed, round) alone, so no state to save."""

from __future__ import annotations

import numpy as np


def sample_sources(names: list[str], per_round: int, seed: int, round_index: int) -> list[str]:
    if per_round >= len(names):
        return list(names)
    picks = np.random.default_rng([seed, 7919, round_index]).choice(len(names), size=per_round, replace=False)
    return [names[i] for i in sorted(picks)]
