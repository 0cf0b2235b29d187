"""The shared transformer body: pre-norm decoder blocks (Llama-style: RMSNorm, RoPE, SwiGLU, no biases).

It maps hidden states to hidden states and owns no embedding, so the same body serves every source's
vocabulary. Its state dict holds parameters only (the RoPE table is a non-persistent buffer), which is exactly
what DEPT averages across sources.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dept.config import ModelConfig


@torch.no_grad()
def init_normal(p: torch.Tensor, std: float, generator: torch.Generator) -> None:
    """Draw on the CPU generator and copy: the same seed gives the same weights on every device."""
    p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, std, generator=generator))


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, hs), the rotate-half layout
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).transpose(1, 3).unbind(2)  # (B, nh, T, hs)
        if rope is not None:
            cos, sin = rope[0][:T].to(q.dtype), rope[1][:T].to(q.dtype)  # keep bf16 under autocast
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.hidden = cfg.mlp_hidden
        self.gate_up = nn.Linear(cfg.d_model, 2 * self.hidden, bias=False)
        self.down = nn.Linear(self.hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).split(self.hidden, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


class Body(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        if cfg.positions == "rope":
            cos, sin = rope_tables(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.rope_cos = self.rope_sin = None
        # `train.activation_checkpointing`: keep only each block's input, recompute the block in the backward
        self.checkpoint_blocks = False

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Normal(0, init_std) weights; residual projections scaled by 1/sqrt(2·layers) (GPT-2); norms at 1."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)  # RMSNorm gains
            else:
                scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("proj.weight", "down.weight")) else 1
                init_normal(p, std * scale, generator)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        rope = (self.rope_cos, self.rope_sin) if self.rope_cos is not None else None
        recompute = self.checkpoint_blocks and torch.is_grad_enabled()
        for block in self.blocks:
            h = checkpoint(block, h, rope, use_reentrant=False) if recompute else block(h, rope)
        return self.final_norm(h)
