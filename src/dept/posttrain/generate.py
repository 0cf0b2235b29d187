"""Sampling text from a model folder: temperature, top-k, top-p (nucleus), a seed, a stop at end of text.

The context starts with the end-of-text token, as every document did in training (the stream is EOS, doc, EOS,
...), then the prompt. Each step keeps the last `max_seq_len` tokens. The next token is drawn on the CPU from a
generator seeded once, so the same model, prompt and settings give the same text on any device and from any of a
model's forms (run, model folder, exported folder). Text is streamed as soon as it decodes to whole characters (a
byte-level token can end inside a UTF-8 character).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dept.data.tokenizer import EOS_ID
from dept.errors import DeptError
from dept.posttrain.folder import ModelFolder


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # 0 = no cut
    top_p: float = 1.0  # 1 = no cut
    seed: int = 0
    stop_at_eos: bool = True

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise DeptError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")
        if not self.temperature >= 0:  # NaN too
            raise DeptError(f"--temperature {self.temperature}: must be >= 0")
        if not -2**63 <= self.seed < 2**64:
            raise DeptError(f"--seed {self.seed}: out of range (a 64-bit integer)")
        if self.top_k < 0:
            raise DeptError(f"--top-k {self.top_k}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise DeptError(f"--top-p {self.top_p}: must be in (0, 1]")


@dataclass
class Generated:
    text: str
    ids: list[int]  # the new tokens
    stopped_at_eos: bool


def next_token_probs(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """The distribution sampled from, over the vocabulary: softmax(logits / T) cut to the top-k tokens, then to
    the smallest set whose probability reaches top-p (the most likely token is always kept), renormalised."""
    probs = torch.softmax(logits.double() / s.temperature, dim=-1)
    if s.top_k and s.top_k < probs.numel():
        kth = torch.topk(probs, s.top_k).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if s.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, 0) - sorted_probs  # mass of the tokens ranked above each one
        keep = before < s.top_p * sorted_probs.sum()
        keep[0] = True
        mask = torch.zeros_like(probs, dtype=torch.bool)
        mask[order[keep]] = True
        probs = torch.where(mask, probs, torch.zeros_like(probs))
    return probs / probs.sum()


@torch.no_grad()
def generate(folder: ModelFolder, prompt: str, sampling: Sampling = Sampling(),
             on_text: Callable[[str], None] | None = None, device: str = "cpu") -> Generated:
    sampling.check()
    lm = folder.language_model(device)
    device = next(lm.parameters()).device  # "auto" resolved
    context = [EOS_ID] + folder.encode(prompt)
    window = folder.model.max_seq_len
    generator = torch.Generator().manual_seed(sampling.seed)
    new: list[int] = []
    shown = ""
    stopped = False
    for _ in range(sampling.max_new_tokens):
        ids = torch.tensor([context[-window:]], device=device)
        logits = lm(ids)[0, -1].float().cpu()
        if sampling.temperature == 0 or not torch.isfinite(logits.double() / sampling.temperature).all():
            token = int(logits.argmax())  # greedy, or a temperature so small that it is greedy's limit
        else:
            token = int(torch.multinomial(next_token_probs(logits, sampling), 1, generator=generator))
        if token == EOS_ID and sampling.stop_at_eos:
            stopped = True
            break
        context.append(token)
        new.append(token)
        text = folder.decode(new)
        if on_text is not None and not text.endswith("\ufffd") and len(text) > len(shown):
            on_text(text[len(shown):])
            shown = text
    text = folder.decode(new)
    if on_text is not None and len(text) > len(shown):
        on_text(text[len(shown):])
    return Generated(text, new, stopped)
