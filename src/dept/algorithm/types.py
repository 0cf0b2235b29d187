"""What travels between the aggregator and the workers, as typed fields (never string-keyed bags)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

TensorDict = dict[str, torch.Tensor]


def payload_bytes(*parts: TensorDict | torch.Tensor | None) -> int:
    """Bytes of the tensors handed over, at their dtype."""
    total = 0
    for part in parts:
        if part is None:
            continue
        tensors = part.values() if isinstance(part, dict) else [part]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


@dataclass
class SharedState:
    """What the aggregator owns: the body, the global embedding (GLOB/TRIM/STD/ACT) and outer-optimizer state."""

    body: TensorDict
    embedding: TensorDict = field(default_factory=dict)  # "tokens" (V, d) and, with learned positions, "positions"
    momentum: TensorDict = field(default_factory=dict)  # Nesterov buffers, keys "body.NAME" / "embedding.NAME"


@dataclass(frozen=True)
class RoundPlan:
    round: int
    sources: list[str]
    first_step: int  # global sequential step of the round's first local step
    local_steps: int
    total_steps: int  # T·N: the cosine schedule spans all sequential steps


@dataclass
class Download:
    """What a worker receives at the start of a round."""

    body: TensorDict
    embedding: TensorDict | None = None  # GLOB: the whole table; TRIM: the source's rows; SPEC: nothing

    @property
    def nbytes(self) -> int:
        return payload_bytes(self.body, self.embedding)


@dataclass
class WorkerUpdate:
    """What a worker sends back after its local steps."""

    source: str
    round: int
    body: TensorDict  # the locally trained body θ_k (the pseudo-gradient is θ − θ_k)
    tokens: int  # tokens processed: the FedAvg weight
    embedding: TensorDict | None = None  # GLOB: the whole table; TRIM: rows in `row_ids` order
    row_ids: torch.Tensor | None = None  # TRIM: global token id of each uploaded row (int32)
    train_loss: float = float("nan")  # mean over the round's local steps
    last_loss: float = float("nan")
    elapsed_s: float = 0.0
    bytes_down: int = 0  # set by the engine: what it handed the worker for this round

    @property
    def nbytes(self) -> int:
        return payload_bytes(self.body, self.embedding, self.row_ids)
