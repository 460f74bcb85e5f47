"""Pieces every decoder family shares: RMSNorm, the SwiGLU MLP, rotary embeddings and the KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LLMConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # variance in float32 whatever the compute dtype, as all three official models do; one
        # fused op instead of six (57 norms per decoded token on Qwen2-1.5B)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); also each expert of a mixture-of-experts layer."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# The mask of a prompt with nothing cached and no padding: each query sees the keys up to its own
# position. SDPA's is_causal then skips the key blocks above the diagonal, which an explicit mask
# makes it compute (744 tokens, 12 heads of 128: 16.2 vs 21.2 ms a layer on AVX2, 11.9 vs 16.0 on
# AVX-512; benchmarks/causal_sdpa.py), for the same result.
CAUSAL = "causal"


def attend(q, k, v, mask, gqa: bool):
    """Softmax attention of (B, H, T, hd) queries over (B, KVH, S, hd) keys and values; `mask` an
    additive or bool (B, 1, T, S) mask, None (every key) or CAUSAL; `gqa`: KVH divides H."""
    causal = isinstance(mask, str)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask, is_causal=causal, enable_gqa=gqa)


def inverse_frequencies(dim: int, theta: float, device) -> torch.Tensor:
    """(dim / 2,) float32 RoPE frequencies theta^(-2i / dim)."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))


def cos_signed_sin(freqs: torch.Tensor, dtype: torch.dtype):
    """(B, T, dim/2) angles -> cos and signed sin (B, 1, T, dim): the sin's first half negated,
    so that rotating half of x is a roll (see apply_rope)."""
    angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, dim)
    sin = angles.sin()
    sin[..., : freqs.shape[-1]].neg_()
    return angles.cos().to(dtype), sin.to(dtype)


def rope_cos_sin(position_ids: torch.Tensor, cfg: LLMConfig, dtype: torch.dtype):
    """cos and signed sin (B, 1, T, rotary_dim), in float32 before the cast, for integer positions
    (B, T), or (3, B, T) rows (T, H, W) of 4.7's M-RoPE.

    Frequency i follows the T row, unless (interleaved M-RoPE) i % 3 == 1 and i < 3 * sections[1]
    (then H) or i % 3 == 2 and i < 3 * sections[2] (then W). Equal rows give plain RoPE."""
    inv_freq = inverse_frequencies(cfg.rotary_dim, cfg.rope_theta, position_ids.device)
    rows = position_ids if position_ids.dim() == 3 else position_ids[None]
    freqs = rows.float()[..., None] * inv_freq  # (3 or 1, B, T, rot/2)
    chosen = freqs[0].clone() if rows.shape[0] == 3 else freqs[0]
    for axis, offset in ((1, 1), (2, 2)):
        if len(cfg.mrope_section) > axis and rows.shape[0] == 3:
            picked = slice(offset, 3 * cfg.mrope_section[axis], 3)
            chosen[..., picked] = freqs[axis][..., picked]
    return cos_signed_sin(chosen, dtype)


def apply_rope(x, cos, signed_sin):
    """x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1] = roll(x) * [-1, 1]:
    the same products as the official code, in 4 ops instead of 7 (twice per layer per token)."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


class KVCache:
    """Preallocated keys and values for every layer: (B, kv_heads, max_len, head_dim) each.

    `length` tokens are filled; a forward pass writes its keys at [length, length + T) of every
    layer and `advance(T)` moves on once all layers have run.
    """

    def __init__(self, cfg: LLMConfig, batch: int, max_len: int, dtype: torch.dtype, device, attends=None):
        # attends[i] False: layer i keeps no keys (a recurrent layer of a hybrid model)
        attends = attends or [True] * cfg.num_layers
        shapes = [(batch, cfg.num_kv_heads, max_len if a else 0, cfg.head_dim) for a in attends]
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for shape in shapes]
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens, {end} needed")
        self.keys[layer][:, :, self.length : end] = k
        self.values[layer][:, :, self.length : end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, steps: int):
        self.length += steps

    def reorder(self, rows: torch.Tensor):
        """Keep, for each new row i, the cache of old row rows[i] (beam search)."""
        rows = rows.to(self.keys[0].device)
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
