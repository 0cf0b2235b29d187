"""Memory one rank needs to train a config, item by item, from the sizes alone (no model is built, nothing printed).

    plan = plan_memory(load_config("configs/paper_1.7b.yaml"), ranks_per_source=8)
    plan.total_bytes / GiB, plan.fits(80 * GiB)          # `dept plan CONFIG` prints it

Parameters: the body as `dept.eval.comms.body_parameters_of` counts it (the code that builds `Body` has the same
shapes: tests check), plus the largest table one rank trains: the variant table's rows (`comms_row`'s
`embedding_params_held`: GLOB/STD/ACT all of V, TRIM/SPEC |V_k| (all of V until `dept prepare` says), SPEC-OPT the
source's own vocabulary) × d_model, plus learned positions. The table is tied to the output head.

On the device, during a training step (P = the parameters the rank trains, R = ranks per source):
  parameters            4·P (fp32 master weights; bf16 autocast changes activations only)
  gradients             4·P
  AdamW moments         8·P (exp_avg and exp_avg_sq, fp32; the per-parameter step counters are left out)
  DDP buckets           4·P with R > 1: DistributedDataParallel's flat gradient buckets, kept beside `.grad`
                        (gradient_as_bucket_view is off)
  FSDP (R > 1)          parameters, gradients and moments / R, plus what is gathered whole: the root unit (table
                        and final norm: its parameters stay gathered from the forward to the end of the backward, and
                        its gradients exist whole until they are reduce-scattered), one block's parameters and the
                        next one's (prefetched), and one block's gradients
  activations           one micro-batch of b = min(micro_batch_size or s, s) sequences of T = seq_len tokens, where
                        s = batch / R is the rank's share (STD/ACT: std_batch_size over R = all ranks); N = b·T:
      residual stream   (L + 1) · N·d · 4: each block's input and the final norm's (kept also when checkpointing)
      block internals   what one block saves for its backward, for each of the L blocks (with activation
                        checkpointing: one, recomputed in the backward), per token, with h = d_mlp, H = heads:
                        fp32: 4·(11d + 4h + H + 2) = RMSNorm (rstd, x·rstd, output) ×2, q and k after RoPE, the qkv
                        output (v is a view of it), SDPA's output and log-sum-exp (flash/efficient kernels: no T×T
                        matrix), the MLP's input, gate|up, silu(gate) and their product
                        bf16 autocast: 4·(3d + H + 2) + 2·(8d + 4h), and per block the bf16 copies of its matrices
                        (2·(4d² + 3dh)) and of the RoPE tables (4·T·d/H) that autocast keeps for the backward
                        (learned positions: q and k are views of the qkv output: 2d fewer values a token in either)
      head              final norm (fp32: 4·(2d + 1) a token; bf16: 4·(d + 1) + 2d, and the bf16 copy of the
                        table, 2·V·d); logits, fp32, V a token, kept by the cross-entropy, and their gradient made
                        while they are kept: 8·N·V (+ 12·N: log-sum-exp, flattened targets). The chunked head
                        (train.speed chunked-head or compile-body-chunked, fp32) keeps instead the gradient of h
                        (4·N·d), the table's gradient and its scaled copy (8·V·d) and one chunk of logits
      table gradient    4·V·d: the embedding lookup's backward makes the table's gradient whole (dense) before it
                        is added into .grad (with micro-batches the head's contribution too, one after the other)
      token ids         the int64 windows, 8·b·(T + 1)
  The sum counts live tensors and is meant as an upper bound of their peak: in a step of one pass the gradients
  are made as the activations are freed, so the true peak is lower by up to min(gradients, activations); with
  micro-batches the gradients of the earlier passes are there while the later ones run. train.speed auto is planned
  as eager (a compiled body keeps no more than the eager one). RMSNorm is counted as torch's unfused kernel (a fused
  one keeps less). Allocators keep freed memory on top: measured on a CPU (bench/plan_memory.py), the live peak was
  0.84-1.03x the plan and the process's RSS under glibc's default allocator 0.98-1.22x (micro-batches and
  checkpointing free and reallocate the most); CUDA's caching allocator rounds and caches blocks likewise.

On the host (per process; on a CPU the same memory as the step's, added to it):
  shared state          the coordinator's fp32 body, and the global table for variants that share one
  outer momentum        Nesterov's buffers, the same size (outer.kind nesterov)
  source state          read at the start of the source's round and kept through it: its own table (SPEC,
                        SPEC-OPT: 4·table; loaded into the model by a copy), its AdamW moments when kept between
                        rounds (train.inner.keep_state; STD/ACT always; on a CPU the optimizer takes these very
                        tensors, so no second copy), the compression residual (4·(body + sent table))
  round end             the update's copy (4·(body + sent table)) and the source state serialised for the disk;
                        on an accelerator the moments are first copied to the host as well. On a CPU this comes when
                        the step's gradients and activations are gone: total = host + max(step, parameters +
                        moments + round end)
The local engine trains a round's sources one after another in one process and keeps each finished update until the
round is aggregated: `pending_update_bytes` more for every source before the last (not in the total). Evaluation
runs without gradients and needs less than a step.
"""

from __future__ import annotations

from dataclasses import dataclass

from dept.algorithm.speed import head_chunk_rows
from dept.algorithm.variants import spec_of
from dept.config import Config, ModelConfig
from dept.errors import ConfigError
from dept.eval.comms import body_parameters, body_parameters_of, comms_row
from dept.eval.config_comms import config_comms

GiB = 1 << 30
CHUNKED_HEAD_MODES = ("chunked-head", "compile-body-chunked")  # train.speed modes that never make whole logits


@dataclass(frozen=True)
class ParameterCounts:
    body: int  # blocks and final norm
    embedding: int  # the table one rank trains (tokens, and learned positions): tied to the output head

    @property
    def total(self) -> int:
        return self.body + self.embedding


@dataclass(frozen=True)
class Activations:
    """Bytes of activations for one micro-batch (see the module docstring for each term)."""

    residual: int  # (L + 1) block inputs
    block: int  # what one block keeps for its backward
    blocks_kept: int  # L, or 1 with activation checkpointing
    head: int  # final norm, and under bf16 the table's bf16 copy
    logits: int  # logits and their gradient (or the chunked head's buffers)
    table_grad: int  # the lookup's dense gradient of the table, made whole before it is added into .grad
    ids: int

    @property
    def total(self) -> int:
        return self.residual + self.blocks_kept * self.block + self.head + self.logits + self.table_grad + self.ids


def block_matrix_params(model: ModelConfig) -> int:
    """The matrices of one block (qkv, output, gate|up, down): 4d² + 3dh."""
    return body_parameters(1, model.d_model, model.mlp_hidden, "swiglu", norms=False)


def activation_bytes(model: ModelConfig, micro_batch: int, seq_len: int, vocab_rows: int, precision: str = "fp32",
                     checkpointing: bool = False, chunked_head: bool = False) -> Activations:
    """Activations of one forward and backward pass of `micro_batch` sequences of `seq_len` tokens."""
    d, h, heads, layers = model.d_model, model.mlp_hidden, model.n_heads, model.n_layers
    n = micro_batch * seq_len
    rope = model.positions == "rope"
    qk = 2 * d if rope else 0  # q and k after RoPE are new tensors; without it, views of the qkv output
    if precision == "bf16":
        per_token = 4 * (3 * d + heads + 2) + 2 * (6 * d + qk + 4 * h)
        block = n * per_token + 2 * block_matrix_params(model) + (4 * seq_len * (d // heads) if rope else 0)
    else:
        block = n * 4 * (9 * d + qk + 4 * h + heads + 2)
    chunked = chunked_head and precision == "fp32"  # the chunked head stands aside under autocast
    if chunked:
        head = n * 4 * (d + 1)  # its output goes straight into the head, which keeps nothing of it
        logits = 4 * n * d + 8 * vocab_rows * d + 4 * min(head_chunk_rows(vocab_rows), n) * vocab_rows
    else:
        head = n * 4 * (2 * d + 1) if precision == "fp32" else n * (4 * (d + 1) + 2 * d) + 2 * vocab_rows * d
        logits = 8 * n * vocab_rows + 12 * n  # + the log-sum-exp (fp32) and the flattened targets (int64)
    return Activations(residual=(layers + 1) * n * d * 4, block=block, blocks_kept=1 if checkpointing else layers,
                       head=head, logits=logits, table_grad=4 * vocab_rows * d, ids=8 * micro_batch * (seq_len + 1))


@dataclass(frozen=True)
class MemoryPlan:
    variant: str
    precision: str
    data_parallel: str
    ranks: int  # ranks that train one participant together
    on_cpu: bool  # the host's memory is the device's: host items count in the total
    params: ParameterCounts
    table_source: str  # the source whose table is planned (the largest)
    sizes_from: str  # where the table sizes came from, in words
    shared_params: int  # held by the coordinator: body, and the global table where the variant shares one
    batch: int  # sequences per step of the participant
    rows_per_rank: int
    micro_batch: int  # sequences per forward/backward pass
    seq_len: int
    activation: Activations
    # bytes on the device during a step
    parameters: int
    gradients: int
    optimizer: int
    ddp_buckets: int
    fsdp_gathered: int
    # bytes on the host
    shared_state: int
    outer_momentum: int
    source_state: int
    round_end: int
    pending_update_bytes: int

    @property
    def activations(self) -> int:
        return self.activation.total

    @property
    def step_bytes(self) -> int:
        """The device's memory during a training step (the upper bound the module docstring explains)."""
        return (self.parameters + self.gradients + self.optimizer + self.ddp_buckets + self.fsdp_gathered
                + self.activations)

    @property
    def host_resident_bytes(self) -> int:
        return self.shared_state + self.outer_momentum + self.source_state

    @property
    def host_bytes(self) -> int:
        """The host's peak on an accelerator: what it keeps all round, and the round end's copies."""
        return self.host_resident_bytes + self.round_end

    @property
    def total_bytes(self) -> int:
        """Per rank: the step on an accelerator; on a CPU the host's state and the larger of the step and the round
        end (which comes after the step's gradients and activations are freed)."""
        if not self.on_cpu:
            return self.step_bytes
        return self.host_resident_bytes + max(self.step_bytes, self.parameters + self.optimizer + self.round_end)

    def fits(self, device_bytes: float) -> bool:
        return self.total_bytes <= device_bytes


def _largest_table(cfg: Config) -> tuple[str, int, int, str]:
    """(source, parameters of its table, global vocabulary, where the sizes came from) over the trained sources,
    from the prepared data where there is some (as `dept comms --config` reads it), else the config's sizes."""
    comms = config_comms(cfg)
    m, spec = cfg.model, spec_of(cfg.train.variant)
    per_source = {s.name: s.vocab_size for s in cfg.trained_sources}
    body = body_parameters_of(m)
    held = {}
    for name in comms.per_source:
        own = comms.own_vocab[name] if comms.measured else (per_source[name] or comms.own_vocab[name])
        held[name] = comms_row(spec.variant, body, m.d_model, comms.global_vocab, 1, trim_rows=comms.trim_rows[name],
                               own_vocab=own, positions=comms.positions).embedding_params_held
    name = max(held, key=held.get)
    return ("the mixture" if spec.baseline else name), held[name], comms.global_vocab, comms.sizes_from


def plan_memory(cfg: Config, ranks_per_source: int | None = None, on_cpu: bool | None = None) -> MemoryPlan:
    """Memory per rank for `cfg` trained by `ranks_per_source` ranks per participant (default
    train.ranks_per_source; STD/ACT: the ranks that train the one model); `on_cpu` default: train.device is cpu."""
    t, m = cfg.train, cfg.model
    spec = spec_of(t.variant)
    ranks = ranks_per_source or t.ranks_per_source
    if ranks < 1:
        raise ConfigError(f"ranks per source must be at least 1, not {ranks}")
    on_cpu = t.device == "cpu" if on_cpu is None else on_cpu
    source, table, global_vocab, sizes_from = _largest_table(cfg)
    positions = m.max_seq_len * m.d_model if m.positions == "learned" else 0
    params = ParameterCounts(body_parameters_of(m), table)
    p = params.total

    batch = cfg.std_batch_size if spec.baseline else t.batch_size
    if batch % ranks:
        key = "train.std_batch_size (or batch_size × sources_per_round)" if spec.baseline else "train.batch_size"
        raise ConfigError(f"{key} = {batch} does not split into equal shares for {ranks} ranks per source")
    rows = batch // ranks
    micro = t.micro_batch_size if 0 < t.micro_batch_size < rows else rows
    vocab_rows = (table - positions) // m.d_model
    act = activation_bytes(m, micro, t.seq_len, vocab_rows, t.precision, t.activation_checkpointing,
                           chunked_head=t.speed in CHUNKED_HEAD_MODES)

    sharded = t.data_parallel == "fsdp" and ranks > 1
    per = ranks if sharded else 1
    block = block_matrix_params(m) + 2 * m.d_model  # an FSDP unit: its matrices and two norms
    gathered = 4 * (2 * (table + m.d_model) + 2 * block + block) if sharded else 0
    buckets = 4 * p if t.data_parallel == "ddp" and ranks > 1 else 0

    shared_params = params.body + (global_vocab * m.d_model + positions if spec.has_global_embedding else 0)
    momentum = shared_params if spec.uses_outer_optimizer and t.outer.kind == "nesterov" else 0
    own_table = 0 if spec.has_global_embedding else table
    sent_table = table if spec.has_global_embedding else 0
    moments = 8 * p if (t.inner.keep_state or spec.baseline) else 0
    residual = 4 * (params.body + sent_table) if t.compression != "none" and spec.compresses_upload else 0
    state = 4 * own_table + moments + residual
    upload = 4 * (params.body + sent_table)
    return MemoryPlan(
        variant=spec.variant.value, precision=t.precision, data_parallel=t.data_parallel, ranks=ranks, on_cpu=on_cpu,
        params=params, table_source=source, sizes_from=sizes_from, shared_params=shared_params, batch=batch,
        rows_per_rank=rows, micro_batch=micro, seq_len=t.seq_len, activation=act,
        parameters=-(-4 * p // per), gradients=-(-4 * p // per), optimizer=-(-8 * p // per), ddp_buckets=buckets,
        fsdp_gathered=gathered, shared_state=4 * shared_params, outer_momentum=4 * momentum,
        source_state=state - (moments if on_cpu else 0), round_end=upload + state + (0 if on_cpu else moments),
        pending_update_bytes=upload)
