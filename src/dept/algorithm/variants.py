"""The one place that says, per variant, which vocabulary is used and what is shared, local and sent."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from dept.config import Variant


class EmbeddingRule(StrEnum):
    SHARED = "shared"  # one global table, downloaded whole and averaged like the body (GLOB, STD, ACT)
    ROWS = "rows"  # the source's rows of the global table, averaged per row over their holders (TRIM)
    LOCAL = "local"  # the source's own table, never sent (SPEC, SPEC-OPT)


@dataclass(frozen=True)
class VariantSpec:
    variant: Variant
    vocabulary: str  # "global" or "own" (per-source tokenizer)
    embedding: EmbeddingRule
    baseline: bool  # STD/ACT: one model on the temperature-sampled mixture, per-step sync
    resets_embedding: bool = False  # ACT (active forgetting)

    @property
    def has_global_embedding(self) -> bool:
        return self.embedding != EmbeddingRule.LOCAL


SPECS: dict[Variant, VariantSpec] = {
    Variant.GLOB: VariantSpec(Variant.GLOB, "global", EmbeddingRule.SHARED, baseline=False),
    Variant.TRIM: VariantSpec(Variant.TRIM, "global", EmbeddingRule.ROWS, baseline=False),
    Variant.SPEC: VariantSpec(Variant.SPEC, "global", EmbeddingRule.LOCAL, baseline=False),
    Variant.SPEC_OPT: VariantSpec(Variant.SPEC_OPT, "own", EmbeddingRule.LOCAL, baseline=False),
    Variant.STD: VariantSpec(Variant.STD, "global", EmbeddingRule.SHARED, baseline=True),
    Variant.ACT: VariantSpec(Variant.ACT, "global", EmbeddingRule.SHARED, baseline=True, resets_embedding=True),
}

# The pseudo-source that trains the STD/ACT baselines on the mixture of all trained sources.
MIXTURE = "mixture"


def spec_of(variant: Variant) -> VariantSpec:
    return SPECS[Variant(variant)]
