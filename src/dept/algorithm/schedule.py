"""Learning rate by global sequential step: linear warm-up, then cosine decay to min_ratio × peak.

The step is round × N + local step, identical for every source, and the schedule spans all T·N sequential
steps rather than restarting each round (PAPER.md).
"""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int, min_ratio: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
