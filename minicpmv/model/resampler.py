"""Perceiver resampler: one cross-attention from Q learned queries to a crop's vision tokens
(docs/model.md), compressing each crop to Q embeddings of the LLM width.

Keys get 2-D sin-cos positions of their patch grid; values do not. 2.0 also adds a fixed
8x8 sin-cos grid (`pos_embed`, stored in its checkpoint) to the queries. Parameter names follow
the official `resampler.*` keys (`attn` is torch's MultiheadAttention layout).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from .positions import sincos_2d


@lru_cache(maxsize=256)
def _key_positions(embed_dim: int, rows: int, cols: int) -> torch.Tensor:
    return sincos_2d(embed_dim, rows, cols)


class Resampler(nn.Module):
    def __init__(self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int, query_pos_embed: bool = False):
        super().__init__()
        self.embed_dim = embed_dim
        self.query = nn.Parameter(torch.zeros(num_queries, embed_dim))
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q, self.ln_kv, self.ln_post = (nn.LayerNorm(embed_dim, eps=1e-6) for _ in range(3))
        self.proj = nn.Parameter(torch.zeros(embed_dim, embed_dim))  # applied as x @ proj, not a Linear
        if query_pos_embed:  # 2.0: frozen, stored in the checkpoint
            self.pos_embed = nn.Parameter(torch.zeros(num_queries, embed_dim), requires_grad=False)
        else:
            self.pos_embed = None

    def forward(self, x: torch.Tensor, tgt_sizes: torch.Tensor) -> torch.Tensor:
        """x (B, L, kv_dim) vision tokens, the first rows*cols valid per crop -> (B, Q, D)."""
        batch, length, _ = x.shape
        sizes = tgt_sizes.tolist()
        key_pos = torch.zeros((batch, length, self.embed_dim), dtype=x.dtype, device=x.device)
        padding = torch.ones((batch, length), dtype=torch.bool, device=x.device)  # True = ignore key
        for i, (rows, cols) in enumerate(sizes):
            key_pos[i, : rows * cols] = _key_positions(self.embed_dim, rows, cols).to(x.dtype)
            padding[i, : rows * cols] = False
        x = self.ln_kv(self.kv_proj(x))  # (B, L, D)
        query = self.ln_q(self.query)  # (Q, D)
        if self.pos_embed is not None:
            query = query + self.pos_embed
        query = query.unsqueeze(0).expand(batch, -1, -1)  # (B, Q, D)
        mask = padding if bool(padding.any()) else None
        out = self.attn(query, x + key_pos, x, key_padding_mask=mask, need_weights=False)[0]
        return self.ln_post(out) @ self.proj
