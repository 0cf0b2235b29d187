"""Compressed uploads (`train.compression`): the pseudo-gradient in bf16 or int8, with error feedback.

Instead of its trained tensors θ_k, a worker sends Δ_k = θ_start − θ_k (θ_start: what it downloaded), quantised:

    bf16          Δ rounded to bfloat16 (round to nearest even): 2 bytes a value
    int8-tensor   q = round(Δ / s), s = max|Δ| / 127 over the tensor (symmetric): 1 byte a value + 4 bytes a tensor
    int8-row      the same with one s per row (first dimension; a vector is one row): + 4 bytes a row

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): the worker adds the residual it kept from the
source's previous upload, e, to Δ before quantising and keeps the new residual e ← (Δ + e) − dequant(q). Over any
number of rounds the sum of what a source sent equals the sum of its true pseudo-gradients minus its current
residual, so rounding loses nothing for good; it only delays it. The residual is part of the source's state
(`SourceState.residual`, saved with the source after each round it trains), so a resumed run continues with
exactly the residual the uninterrupted one had, and a lost update's residual is never built upon. It costs each
source's saved state one fp32 copy of what it uploads (GLOB: body and whole table).

What is compressed is the upload of the DEPT variants, the body and (GLOB/TRIM) the table or its rows; TRIM's row
ids stay int32. Downloads stay fp32: they are the global state θ itself, not a difference from something the
source already holds (a source sampled now may last have seen θ many rounds ago), so compressing them would need
a lossy θ at the worker or per-source copies of θ at the aggregator. The STD/ACT baselines send their one model
as it is (the variant table's `compresses_upload`): their traffic is accounted as STD's per-step all-reduce.

The aggregator turns an upload back into θ_k = θ_start − dequant(q) with its own θ_start (the shared state does
not change while a round runs), so FedAvg and the Nesterov outer step are the same code, fed the dequantised
updates; with `none` nothing here runs and training is bit for bit what it was without the option.
"""

from __future__ import annotations

import torch

from dept.algorithm.types import (
    Download,
    EmbeddingPayload,
    Encoded,
    QuantizedTensors,
    TableRows,
    TensorDict,
    WholeTable,
)
from dept.config import TrainConfig

SCHEMES = ("bf16", "int8-tensor", "int8-row")


def scheme_of(compression: str, scale: str = "tensor") -> str | None:
    """The scheme `train.compression` (+ `compression_scale`) names; None: uploads are not compressed."""
    if compression == "none":
        return None
    if compression == "int8":
        return f"int8-{scale}"
    if compression != "bf16":
        raise ValueError(f"unknown compression '{compression}'")
    return "bf16"


def _int8_scale(x: torch.Tensor, per_row: bool) -> torch.Tensor:
    """max|x| / 127, shaped to broadcast against x: over the whole tensor, or per row (dim 0) of a matrix."""
    a = x.abs()
    if per_row and x.ndim >= 2:
        amax = a.amax(dim=tuple(range(1, x.ndim)), keepdim=True)
    else:
        amax = a.amax().reshape([1] * max(x.ndim, 1))
    return amax / 127.0


def quantize(tensors: TensorDict, scheme: str) -> QuantizedTensors:
    """Each tensor at the scheme's precision (computed in fp32 on the CPU: the same bytes on every machine)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown compression scheme '{scheme}' (choose {', '.join(SCHEMES)})")
    values: TensorDict = {}
    scales: TensorDict = {}
    for name, t in tensors.items():
        x = t.detach().to("cpu", torch.float32)
        if scheme == "bf16":
            values[name] = x.to(torch.bfloat16)
            continue
        scale = _int8_scale(x, per_row=scheme == "int8-row")
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero tensor (or row) stays zero
        values[name] = torch.round(x / safe).clamp_(-127, 127).to(torch.int8)
        scales[name] = scale
    return QuantizedTensors(scheme, values, scales)


def dequantize(q: QuantizedTensors) -> TensorDict:
    """The fp32 values the quantised tensors stand for."""
    if q.scheme == "bf16":
        return {k: v.float() for k, v in q.values.items()}
    return {k: v.float() * q.scales[k] for k, v in q.values.items()}


def compress_delta(start: TensorDict, trained: TensorDict, residual: TensorDict,
                   scheme: str) -> tuple[QuantizedTensors, TensorDict]:
    """Quantise Δ + e (Δ = start − trained, e = the residual kept from the last upload; none the first time) and
    return it with the new residual (Δ + e) − dequant(q)."""
    target = {}
    for name, t in trained.items():
        delta = start[name].detach().to("cpu", torch.float32) - t.detach().to("cpu", torch.float32)
        target[name] = delta + residual[name] if name in residual else delta
    sent = quantize(target, scheme)
    restored = dequantize(sent)
    return sent, {k: target[k] - restored[k] for k in target}


def trained_values(sent: Encoded, start: TensorDict) -> TensorDict:
    """θ_k from an upload: the tensors themselves, or θ_start − dequant(q) for a compressed pseudo-gradient."""
    if not isinstance(sent, QuantizedTensors):
        return sent
    return {k: start[k].float() - v for k, v in dequantize(sent).items()}


class UploadCompression:
    """A worker's side: turns what it trained into what it sends, keeping the residual of each part.

    The residual's keys are "body.NAME" and "table.NAME" (TRIM: the rows of V_k, in the table's row order).
    """

    def __init__(self, scheme: str):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown compression scheme '{scheme}' (choose {', '.join(SCHEMES)})")
        self.scheme = scheme

    def _part(self, prefix: str, start: TensorDict, trained: TensorDict, residual: TensorDict,
              kept: TensorDict) -> QuantizedTensors:
        mine = {k[len(prefix):]: v for k, v in residual.items() if k.startswith(prefix)}
        sent, left = compress_delta(start, trained, mine, self.scheme)
        kept.update({prefix + k: v for k, v in left.items()})
        return sent

    def encode(self, download: Download, body: TensorDict, table: EmbeddingPayload,
               residual: TensorDict) -> tuple[QuantizedTensors, EmbeddingPayload, TensorDict]:
        """The compressed body and table (as `download` had them at the start of the round), and the residual to
        keep for the next upload."""
        kept: TensorDict = {}
        sent_body = self._part("body.", download.body, body, residual, kept)
        if table is None:
            return sent_body, None, kept
        if download.embedding is None:
            raise ValueError("a table upload needs the table the round started from")
        sent_table = self._part("table.", download.embedding.tensors, table.tensors, residual, kept)
        if isinstance(table, WholeTable):
            return sent_body, WholeTable(sent_table), kept
        return sent_body, TableRows(sent_table, table.ids), kept


def upload_compression(train: TrainConfig, compresses_upload: bool) -> UploadCompression | None:
    """The worker's compression for this config and variant (None: uploads are sent as trained)."""
    scheme = scheme_of(train.compression, train.compression_scale)
    return UploadCompression(scheme) if scheme and compresses_upload else None
