"""What crosses the seam between the algorithm and an engine, as typed fields (never string-keyed bags).

The coordinator turns a `RoundPlan` into one `Assignment` per participant; an engine delivers each to the worker
that holds the participant's data and brings back one `WorkerUpdate`; the coordinator aggregates them. Evaluation
goes the same way: `EvalAssignment` out, `SourceEval` back. A participant is a `Source` (one of the configured
data sources) or, for the STD/ACT baselines, the `Mixture` of all trained sources: a type of its own, so no
source name is reserved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

TensorDict = dict[str, torch.Tensor]


@dataclass
class QuantizedTensors:
    """A tensor dict compressed for the wire (`train.compression`, see `dept.algorithm.compression`).

    A compressed upload carries one of these in place of the trained tensors: the pseudo-gradient
    Δ = θ_start − θ_k (plus the worker's error feedback), which the aggregator turns back into θ_k with the θ_start
    it sent. `scheme` "bf16": `values` in bfloat16, no scales; "int8-tensor" / "int8-row": int8 values and fp32
    `scales` shaped to broadcast against them (one per tensor, or one per row: the first dimension; a vector is one
    row), so that x ≈ values · scale.
    """

    scheme: str
    values: TensorDict
    scales: TensorDict = field(default_factory=dict)

    def keys(self):
        return self.values.keys()

    @property
    def nbytes(self) -> int:
        return payload_bytes(self.values, self.scales)


Encoded = TensorDict | QuantizedTensors  # tensors as they travel: the values themselves, or compressed


def payload_bytes(*parts: Encoded | torch.Tensor | None) -> int:
    """Bytes of the tensors handed over, at their dtype (a compressed part: its values and scales)."""
    total = 0
    for part in parts:
        if part is None:
            continue
        if isinstance(part, QuantizedTensors):
            total += part.nbytes
            continue
        tensors = part.values() if isinstance(part, dict) else [part]
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


# ---- participants ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One configured data source; `index` is its position in the config (it seeds the source's streams)."""

    name: str
    index: int

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class Mixture:
    """STD/ACT: one model trained on batches mixed from every trained source with temperature τ."""

    sources: tuple[str, ...]

    # Source names must start with a letter or digit (config.SourceConfig), so this key is never a source's.
    key = "_mixture"


Participant = Source | Mixture


@dataclass(frozen=True)
class SourceProfile:
    """What the coordinator knows of a participant without seeing its data: the shape of its table.

    `held_ids`: the global token ids of the rows its table holds (V_k, sorted), for variants whose tables hold
    only the source's own rows (TRIM, SPEC); None when the table covers its whole vocabulary.
    """

    participant: Participant
    vocab_size: int  # of the vocabulary the variant uses (global or the source's own)
    global_vocab: int  # of the global tokenizer, which every site has
    held_ids: np.ndarray | None = None
    unseen: bool = False

    @property
    def table_rows(self) -> int:
        return self.vocab_size if self.held_ids is None else int(self.held_ids.size)


# ---- embedding payloads ----------------------------------------------------------------------------------------

@dataclass
class WholeTable:
    """The whole global table ("tokens", and "positions" when learned): GLOB, STD, ACT.

    An upload under `train.compression` holds the table's pseudo-gradient, compressed (`QuantizedTensors`)."""

    tensors: Encoded

    @property
    def nbytes(self) -> int:
        return payload_bytes(self.tensors)


@dataclass
class TableRows:
    """Some rows of the global table (TRIM): "tokens" holds the rows in `ids` order; "positions" is whole.

    `ids` (int32 global token ids) travel on upload, so the aggregator places rows without keeping any source's
    vocabulary; a download leaves them out (None): the receiver knows its own V_k. An upload under
    `train.compression` holds the rows' pseudo-gradient, compressed (`QuantizedTensors`); the ids stay int32.
    """

    tensors: Encoded
    ids: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        return payload_bytes(self.tensors, self.ids)


EmbeddingPayload = WholeTable | TableRows | None  # None: the variant sends no embedding (SPEC, SPEC-OPT)


# ---- shared state and plans ------------------------------------------------------------------------------------

@dataclass
class SharedState:
    """What the aggregator owns: the body, the global embedding (GLOB/TRIM/STD/ACT), the outer optimizer state."""

    body: TensorDict
    embedding: TensorDict = field(default_factory=dict)
    momentum: TensorDict = field(default_factory=dict)  # Nesterov buffers, keys "body.NAME" / "embedding.NAME"


@dataclass(frozen=True)
class RoundPlan:
    round: int
    participants: tuple[Participant, ...]
    first_step: int  # global sequential step of the round's first local step
    local_steps: int
    total_steps: int  # T·N: the cosine schedule spans all sequential steps
    keep_from_round: int = 0  # the oldest round a resume may restart at: source state before it can be pruned

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.participants]


@dataclass
class Download:
    """What a worker receives at the start of a round."""

    body: TensorDict
    embedding: EmbeddingPayload = None

    @property
    def nbytes(self) -> int:
        return payload_bytes(self.body) + (self.embedding.nbytes if self.embedding is not None else 0)


@dataclass
class Assignment:
    """One participant's work for a round: what it downloads, and the plan's schedule window."""

    participant: Participant
    plan: RoundPlan
    download: Download
    state_round: int | None = None  # the participant's last aggregated round: its own state is loaded as saved
    #                                 after that round (None: it starts fresh). A round whose update was lost
    #                                 (a worker that failed or timed out) is thereby never built upon.


@dataclass
class Transfer:
    """Bytes an engine really moved for one assignment: to the worker, and back."""

    down: int
    up: int


@dataclass
class WorkerUpdate:
    """What a worker sends back after its local steps."""

    participant: Participant
    round: int
    body: Encoded | None  # the locally trained body θ_k, or (`train.compression`) the pseudo-gradient
    #                       θ_start − θ_k compressed; None where it was summed in another process
    tokens: int  # tokens processed: the FedAvg weight
    embedding: EmbeddingPayload = None  # GLOB: the whole table; TRIM: its rows with their ids; SPEC: nothing
    train_loss: float = float("nan")  # mean over the round's local steps
    last_loss: float = float("nan")
    elapsed_s: float = 0.0
    moved: Transfer | None = None  # set by the engine
    stats: dict[str, float] = field(default_factory=dict)  # training health (see `worker.TRAINING_STATS`)
    nonfinite: str = ""  # what was NaN or infinite (a loss, a tensor): such an update is left out of the round

    @property
    def key(self) -> str:
        return self.participant.key

    @property
    def nbytes(self) -> int:
        return payload_bytes(self.body) + (self.embedding.nbytes if self.embedding is not None else 0)

    def receipt(self) -> WorkerUpdate:
        """The same update without its tensors: what other processes learn of it when the tensors are summed
        where they are (see `aggregator.PartialSums`)."""
        return WorkerUpdate(self.participant, self.round, None, self.tokens, None, self.train_loss,
                            self.last_loss, self.elapsed_s, self.moved, dict(self.stats), self.nonfinite)


# ---- evaluation ------------------------------------------------------------------------------------------------

@dataclass
class EvalAssignment:
    """Evaluate one source where its data lives: with this body and, where the variant shares one, its table."""

    source: Source
    body: TensorDict
    embedding: EmbeddingPayload  # GLOB/STD/ACT: the whole table; TRIM: the source's rows; SPEC: none (local)
    state_round: int | None = None  # SPEC/SPEC-OPT: the source's own table as saved after this round


@dataclass
class SourceEval:
    """One source's validation result: exactly the bytes scored, whatever the tokenizer."""

    source: str
    unseen: bool
    loss: float  # nats per token
    perplexity: float
    bpb: float  # bits per UTF-8 byte
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the documents scored
    documents: int
    vocab_size: int  # rows of the table that scored it
    oov_tokens: int = 0  # scored tokens outside the table's rows (TRIM/SPEC), each at the escape cost
    note: str = ""
