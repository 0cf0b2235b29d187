"""Communication and embedding memory, analytically, for any model shape, vocabulary and variant.

Convention (the paper's): per round, a sampled DEPT source downloads and uploads what its variant shares (body;
GLOB the whole table; TRIM its |V_k| rows, plus their int32 ids on upload). STD synchronises every parameter at
every one of the round's N sequential steps (one all-reduce: each worker sends its gradient and receives the
reduced one), so per round and worker it moves N × all parameters each way. The training loop counts the bytes
of the tensors it really hands over; `tests` check those counts against these formulas.

With `train.compression` a DEPT source uploads the same tensors' pseudo-gradient at 2 bytes a value (bf16) or
1 (int8), plus int8's fp32 scales: one per tensor (a few dozen: negligible) or one per row (4 bytes a row: for a
table row of d values, 4/d of the fp32 size). TRIM's row ids stay int32; downloads stay at `dtype_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dept.algorithm.variants import Rows, spec_of
from dept.config import ModelConfig, Variant
from dept.data.prepared import GLOBAL


def body_parameters(n_layers: int, d_model: int, d_mlp: int, mlp: str = "swiglu", norms: bool = True) -> int:
    """Attention (q, k, v, out: 4·d²) + MLP (SwiGLU 3·d·h, GELU 2·d·h) per block, RMS/LayerNorm weights."""
    per_block = 4 * d_model * d_model + (3 if mlp == "swiglu" else 2) * d_model * d_mlp
    norm_params = (2 * n_layers + 1) * d_model if norms else 0
    return n_layers * per_block + norm_params


def body_parameters_of(cfg: ModelConfig) -> int:
    return body_parameters(cfg.n_layers, cfg.d_model, cfg.mlp_hidden, "swiglu")


VALUE_BYTES = {"bf16": 2, "int8-tensor": 1, "int8-row": 1}  # per value of a compressed upload


def body_scale_count(n_layers: int, d_model: int, d_mlp: int, mlp: str = "swiglu", norms: bool = True,
                     per: str = "tensor") -> int:
    """fp32 scales an int8 upload of the body carries: one per tensor (attention qkv and output, MLP in and out,
    norm vectors), or one per row (qkv 3·d, output d, MLP in 2·h (SwiGLU's gate and up) or h, out d; a norm vector
    is one row)."""
    vectors = 2 * n_layers + 1 if norms else 0
    if per == "tensor":
        return 4 * n_layers + vectors
    mlp_in_rows = 2 * d_mlp if mlp == "swiglu" else d_mlp
    return n_layers * (4 * d_model + mlp_in_rows + d_model) + vectors


def body_scale_count_of(cfg: ModelConfig, per: str) -> int:
    return body_scale_count(cfg.n_layers, cfg.d_model, cfg.mlp_hidden, "swiglu", per=per)


@dataclass(frozen=True)
class CommsRow:
    variant: str
    params_down: int  # per sampled source per round
    params_up: int
    bytes_down: int
    bytes_up: int
    embedding_params_held: int  # by one worker
    std_params_per_round: int  # STD: N × all parameters, each way

    @property
    def reduction_vs_std(self) -> float:
        return self.std_params_per_round / self.params_up


def comms_row(variant: Variant, body: int, d_model: int, global_vocab: int, local_steps: int,
              trim_rows: int | None = None, own_vocab: int | None = None, positions: int = 0,
              dtype_bytes: int = 4, compression: str | None = None, body_scales: int = 0) -> CommsRow:
    """Parameters and bytes one sampled source moves per round, from the variant table.

    `trim_rows`: |V_k| of a table that holds only the source's rows (TRIM, SPEC; default all of V);
    `own_vocab`: SPEC-OPT's own vocabulary; `positions`: learned position rows (0 = RoPE); `compression`: the
    upload's scheme (bf16, int8-tensor, int8-row; None = sent at `dtype_bytes`) with `body_scales` fp32 scales
    for the body's int8 values (`body_scale_count`).
    """
    spec = spec_of(variant)
    pos = positions * d_model
    full = body + global_vocab * d_model + pos
    if spec.rows == Rows.HELD:
        rows = global_vocab if trim_rows is None else trim_rows
    else:
        rows = global_vocab if spec.vocabulary == GLOBAL else (own_vocab or global_vocab)
    held = rows * d_model + pos
    sent = body + (held if spec.has_global_embedding else 0)
    id_bytes = 4 * rows if spec.has_global_embedding and spec.rows == Rows.HELD else 0  # int32 row ids, up
    if spec.baseline:  # one all-reduce of every parameter per sequential step
        sent = local_steps * full
    up = sent * dtype_bytes + id_bytes
    if compression and spec.compresses_upload:
        scales = 0
        if compression == "int8-tensor":
            scales = body_scales + ((2 if positions else 1) if spec.has_global_embedding else 0)
        elif compression == "int8-row":
            scales = body_scales + (rows + positions if spec.has_global_embedding else 0)
        up = sent * VALUE_BYTES[compression] + 4 * scales + id_bytes
    return CommsRow(spec.variant.value, sent, sent, sent * dtype_bytes, up, held, local_steps * full)


# The paper's largest MC4 model: 24 blocks, d_model 2048, mT5's 250,112-token vocabulary, N = 500; the paper
# reports a 1.198B body (1.71B in all) and 714× less communication than STD.
PAPER_MC4_1B7 = {"n_layers": 24, "d_model": 2048, "d_mlp": 8192, "mlp": "gelu", "vocab": 250_112,
                 "local_steps": 500, "reported_body": 1_198_000_000, "own_vocab": 50_257,
                 "sources": 8, "sources_per_round": 4}  # MC4's 8 trained languages; M = 4 assumed (as on The Pile)


def private_state_bytes(variant: Variant, body: int, d_model: int, held_rows: int, positions: int = 0,
                        keep_optimizer: bool = False, compression: str | None = None) -> int:
    """Bytes of fp32 state one site keeps between its rounds (one version; the store keeps at most two while a
    round is being written): its own table (SPEC/SPEC-OPT), AdamW's two moments of what it trains when
    `train.inner.keep_state` is on, and with compressed uploads the error-feedback residual of what it sends.
    STD/ACT have no per-site state in the data-centre setting the comparison stands for: 0."""
    spec = spec_of(variant)
    if spec.baseline:
        return 0
    table = held_rows * d_model + positions * d_model
    own = 0 if spec.has_global_embedding else table
    moments = 2 * (body + table) if keep_optimizer else 0
    residual = (body + (table if spec.has_global_embedding else 0)) if compression else 0
    return 4 * (own + moments + residual)


def link_seconds(bytes_down: int, bytes_up: int, gbit_per_s: float) -> float:
    """Time a full-duplex link of `gbit_per_s` needs to move a round's download and upload (both directions at
    once at line rate; no latency, protocol overhead or overlap with compute)."""
    return max(bytes_down, bytes_up) * 8 / (gbit_per_s * 1e9)


def format_seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
