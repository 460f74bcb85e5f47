"""Perceiver resampler: one cross-attention from Q learned queries to a crop's vision tokens
(docs/model.md), compressing each crop to Q embeddings of the LLM width.

Keys get positions, values do not. 2.x and 4.5 use a 2-D sin-cos of the crop's patch grid; 1.0
(Qwen-VL style) upsamples its stored 8x8 table (`pos_embed`) to the grid instead. 2.0 and 1.0 also
add that table to the queries. 4.5's 3-D resampler attends over groups of crops (video frames
packed together): one output per group, keys of all its crops with a 1-D sin-cos of each crop's
time id added. Parameter names follow the official `resampler.*` keys (`attn` is torch's
MultiheadAttention layout).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .positions import sincos_1d, sincos_2d


@lru_cache(maxsize=256)
def _key_positions(embed_dim: int, rows: int, cols: int) -> torch.Tensor:
    return sincos_2d(embed_dim, rows, cols)


@lru_cache(maxsize=1024)
def _time_position(embed_dim: int, time_id: int) -> torch.Tensor:
    # a still crop (id -1) gets none: the official code adds zeros
    return torch.zeros(embed_dim) if time_id < 0 else sincos_1d(embed_dim, [time_id])[0]


def upsampled_table(table: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """1.0's key positions: the (side², D) query table bicubic-resized to (rows * cols, D) in float32."""
    side = round(table.shape[0] ** 0.5)
    if (rows, cols) == (side, side):
        return table
    grid = table.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, side, side)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(rows * cols, -1).to(table.dtype)  # (rows*cols, D)


class Resampler(nn.Module):
    def __init__(
        self,
        num_queries: int,
        embed_dim: int,
        num_heads: int,
        kv_dim: int,
        query_pos_embed: bool = False,
        key_positions: str = "sincos",
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.key_positions = key_positions
        self.query = nn.Parameter(torch.zeros(num_queries, embed_dim))
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q, self.ln_kv, self.ln_post = (nn.LayerNorm(embed_dim, eps=1e-6) for _ in range(3))
        self.proj = nn.Parameter(torch.zeros(embed_dim, embed_dim))  # applied as x @ proj, not a Linear
        if query_pos_embed:  # 2.0 / 1.0: frozen, stored in the checkpoint
            self.pos_embed = nn.Parameter(torch.zeros(num_queries, embed_dim), requires_grad=False)
        else:
            self.pos_embed = None

    def key_position(self, rows: int, cols: int) -> torch.Tensor:
        """(rows * cols, D) position added to the keys of a crop of rows x cols patches."""
        if self.key_positions == "stored":
            return upsampled_table(self.pos_embed, rows, cols)
        return _key_positions(self.embed_dim, rows, cols)

    def forward(
        self, x: torch.Tensor, tgt_sizes: torch.Tensor, time_groups: list[list[int]] | None = None
    ) -> torch.Tensor:
        """x (B, L, kv_dim) vision tokens, the first rows*cols valid per crop -> (B, Q, D), or
        (G, Q, D) with `time_groups`: the time ids of G groups of consecutive crops (B in all)."""
        batch, length, _ = x.shape
        sizes = tgt_sizes.tolist()
        key_pos = torch.zeros((batch, length, self.embed_dim), dtype=x.dtype, device=x.device)
        padding = torch.ones((batch, length), dtype=torch.bool, device=x.device)  # True = ignore key
        for i, (rows, cols) in enumerate(sizes):
            key_pos[i, : rows * cols] = self.key_position(rows, cols).to(x.dtype)
            padding[i, : rows * cols] = False
        x = self.ln_kv(self.kv_proj(x))  # (B, L, D)
        keys, values = x + key_pos, x
        if time_groups is not None:
            times = [t for group in time_groups for t in group]
            keys = keys + torch.stack([_time_position(self.embed_dim, t) for t in times]).to(keys)[:, None]
            if any(len(group) > 1 for group in time_groups):
                keys, values, padding = _pack_groups(keys, values, padding, [len(g) for g in time_groups])
        query = self.ln_q(self.query)  # (Q, D)
        if self.pos_embed is not None:
            query = query + self.pos_embed
        query = query.unsqueeze(0).expand(keys.shape[0], -1, -1)  # (B or G, Q, D)
        mask = padding if bool(padding.any()) else None
        out = self.attn(query, keys, values, key_padding_mask=mask, need_weights=False)[0]
        return self.ln_post(out) @ self.proj


def _pack_groups(keys, values, padding, group_sizes: list[int]):
    """Crops (B, L, D) -> groups (G, Lg, D): each group's valid tokens, crop after crop (frame-major),
    right-padded to the longest group; the padding mask (G, Lg) marks the padded tail."""
    keep = ~padding
    packed_keys, packed_values = [], []
    start = 0
    for size in group_sizes:
        rows = keep[start : start + size]  # (size, L)
        packed_keys.append(keys[start : start + size][rows])  # (tokens, D), crop after crop
        packed_values.append(values[start : start + size][rows])
        start += size
    longest = max(len(k) for k in packed_keys)
    mask = torch.ones((len(group_sizes), longest), dtype=torch.bool, device=keys.device)
    for i, k in enumerate(packed_keys):
        mask[i, : len(k)] = False
    pad = nn.utils.rnn.pad_sequence
    return pad(packed_keys, batch_first=True), pad(packed_values, batch_first=True), mask
