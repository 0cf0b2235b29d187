"""Evaluate one source where its data lives, with the model the variant gives it; typed results back.

The coordinator sends each source the body and, where the variant shares one, its table (GLOB/STD/ACT: the whole
global table; TRIM: the source's rows of it). SPEC and SPEC-OPT evaluate with the source's own table as saved
(SPEC-OPT also with its own tokenizer). Tables of V_k rows (TRIM, SPEC) score tokens outside V_k by the escape
rule of `eval.perplexity`. Every variant scores the same leading whole documents of the validation split
(`eval.max_bytes`, `eval.max_documents`), so its bits per byte cover the same text.

Unseen sources: with `eval.unseen_adapt_steps` > 0, every variant first trains the table it would use (the shared
one or its rows, or a fresh one in SPEC/SPEC-OPT, which have none) for that many steps around the frozen body on
the source's train split, the same budget and the same training step for all (noted in the results); with 0, the
shared table zero-shot, or the fresh seeded table.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from dept.algorithm.adapt import adapt_embedding
from dept.algorithm.participants import LocalData, row_map
from dept.algorithm.runtime import autocast_context
from dept.algorithm.source_store import SourceStore
from dept.algorithm.tables import own_embedding, received_embedding
from dept.algorithm.types import EvalAssignment, SourceEval
from dept.algorithm.variants import VariantSpec
from dept.config import Config
from dept.data.prepared import GLOBAL
from dept.eval.perplexity import HeldRows, evaluate_tokens, leading_documents
from dept.model import Body, LanguageModel


class SourceEvaluator:
    def __init__(self, cfg: Config, spec: VariantSpec, data: LocalData, store: SourceStore, device: torch.device):
        self.cfg, self.spec, self.data, self.store, self.device = cfg, spec, data, store, device

    def _byte_lengths(self, name: str) -> np.ndarray:
        prepared = self.data.data
        return prepared.global_byte_lengths if self.spec.vocabulary == GLOBAL else prepared.own_byte_lengths(name)

    def evaluate(self, assignment: EvalAssignment) -> SourceEval:
        cfg, source = self.cfg, assignment.source
        profile = self.data.profile(source)
        note = ""
        if self.spec.has_global_embedding:
            emb = received_embedding(profile, cfg.model, assignment.embedding)
        else:
            state = self.store.load_after(source.key, assignment.state_round)
            emb = own_embedding(profile, cfg.model, cfg.run.seed, state.embedding if state else None)
            if state is None and not profile.unseen:
                note = "never sampled"
        body = Body(cfg.model)
        body.load_state_dict(assignment.body)
        if profile.unseen and cfg.eval.unseen_adapt_steps > 0:
            stream = self.data.window_stream(source, cfg.train.batch_size, profile.held_ids)
            adapt_embedding(body, emb, stream, cfg.eval.unseen_adapt_steps, cfg.train.inner, self.device,
                            cfg.train.precision)
            note = f"embedding adapted {cfg.eval.unseen_adapt_steps} steps"

        lengths = self._byte_lengths(source.name)
        val = self.data.data.source(source.name).tokens(self.spec.vocabulary, "val")
        kept, documents = leading_documents(val, lengths, cfg.eval.max_bytes, cfg.eval.max_documents)
        held = None
        if profile.held_ids is not None:
            held = HeldRows(row_map(profile.held_ids, profile.vocab_size), cfg.eval.escape_probability)
        lm = LanguageModel(body, emb).to(self.device)
        res = evaluate_tokens(lm, val[:kept], lengths, cfg.train.seq_len, cfg.eval.batch_size, self.device,
                              functools.partial(autocast_context, self.device, cfg.train.precision), held)
        return SourceEval(source=source.name, unseen=profile.unseen, loss=res.loss, perplexity=res.perplexity,
                          bpb=res.bits_per_byte, tokens=res.tokens, bytes=res.bytes, documents=documents,
                          vocab_size=emb.vocab_size, oov_tokens=res.oov_tokens, note=note)


def summarize(results: list[SourceEval]) -> dict:
    seen = [r for r in results if not r.unseen]
    unseen = [r for r in results if r.unseen]
    out = {"mean_bpb": float(np.mean([r.bpb for r in seen])) if seen else float("nan"),
           "mean_loss": float(np.mean([r.loss for r in seen])) if seen else float("nan")}
    if unseen:
        out["mean_bpb_unseen"] = float(np.mean([r.bpb for r in unseen]))
        out["mean_loss_unseen"] = float(np.mean([r.loss for r in unseen]))
    return out
