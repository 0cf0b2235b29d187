"""Evaluate every source (trained and unseen) with the model the variant gives it.

GLOB, TRIM, STD and ACT own one global embedding: every source is evaluated with body + global table over the
full global vocabulary. SPEC and SPEC-OPT evaluate each trained source with its own table (and, for SPEC-OPT, its
own tokenizer). Unseen sources: with `eval.unseen_adapt_steps` > 0, every variant first trains the table it
would use (the global one, or a fresh one in SPEC/SPEC-OPT, which have none) for that many steps around the
frozen body on the source's train split, the same budget for all (noted in the results); with 0, the global
table zero-shot, or the fresh seeded table.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from dept.algorithm.adapt import adapt_embedding
from dept.algorithm.runtime import autocast_context
from dept.algorithm.source_store import SourceStore
from dept.algorithm.types import SharedState
from dept.algorithm.variants import VariantSpec
from dept.algorithm.worker import own_embedding
from dept.config import Config
from dept.data.prepared import GLOBAL, PreparedData
from dept.data.stream import WindowStream
from dept.eval.perplexity import evaluate_tokens
from dept.model import Body, LanguageModel, SourceEmbedding


def _body(cfg: Config, shared: SharedState) -> Body:
    body = Body(cfg.model)
    body.load_state_dict(shared.body)
    return body


def evaluate_sources(cfg: Config, spec: VariantSpec, data: PreparedData, shared: SharedState,
                     store: SourceStore, before_round: int, device: torch.device) -> list[dict]:
    names = [s.name for s in cfg.data.sources]
    results = []
    for index, src_cfg in enumerate(cfg.data.sources):
        src = data.source(src_cfg.name)
        vocab = spec.vocabulary
        note = ""
        if spec.has_global_embedding:
            emb = SourceEmbedding(data.global_vocab_size, cfg.model)
            emb.load_tensors(shared.embedding)
            lengths = data.global_byte_lengths
        else:
            state = store.load(src_cfg.name, before_round)
            emb = own_embedding(src.vocab_size(vocab), cfg, state.embedding if state else None, index)
            lengths = data.global_byte_lengths if vocab == GLOBAL else data.own_byte_lengths(src_cfg.name)
            if state is None and not src_cfg.unseen:
                note = "never sampled"
        body = _body(cfg, shared)
        if src_cfg.unseen and cfg.eval.unseen_adapt_steps > 0:
            stream = WindowStream(src.tokens(vocab, "train"), cfg.train.seq_len, cfg.train.batch_size,
                                  cfg.run.seed, names.index(src_cfg.name), src_cfg.name)
            adapt_embedding(body, emb, stream, cfg.eval.unseen_adapt_steps, cfg.train.inner.lr, device)
            note = f"embedding adapted {cfg.eval.unseen_adapt_steps} steps"
        lm = LanguageModel(body, emb).to(device)
        res = evaluate_tokens(lm, src.tokens(vocab, "val"), lengths, cfg.train.seq_len, cfg.eval.max_tokens,
                              cfg.eval.batch_size, device,
                              functools.partial(autocast_context, device, cfg.train.precision))
        results.append({"source": src_cfg.name, "unseen": src_cfg.unseen, "loss": res.loss,
                        "perplexity": res.perplexity, "bpb": res.bits_per_byte, "tokens": res.tokens,
                        "bytes": res.bytes, "vocab_size": emb.vocab_size, "note": note})
    return results


def summarize(results: list[dict]) -> dict:
    seen = [r for r in results if not r["unseen"]]
    unseen = [r for r in results if r["unseen"]]
    out = {"mean_bpb": float(np.mean([r["bpb"] for r in seen])) if seen else float("nan"),
           "mean_loss": float(np.mean([r["loss"] for r in seen])) if seen else float("nan")}
    if unseen:
        out["mean_bpb_unseen"] = float(np.mean([r["bpb"] for r in unseen]))
    return out
