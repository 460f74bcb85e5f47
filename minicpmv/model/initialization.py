"""Weights for a model trained from nothing (the demo model).

Two things matter at the demo's small widths (192-256):
- Module constructors leave the resampler's queries and output projection at zero (a checkpoint
  always overwrites them). Trained from there, every query sees the same keys and the image
  reaches the LLM as a constant, so the model never learns to look.
- The usual N(0, 0.02) is sized for widths of 1-4k; at width 256 it makes every attention
  logit about 0.1, i.e. uniform attention. The resampler then averages all patches (of a scene
  that is mostly background: nearly the same vector for every image) and the LLM learns to
  ignore the image before the encoder can learn anything. LeCun-normal weights (std
  1/sqrt(fan_in)) give logits of order 1 from the start.
Token embeddings and image features both start with unit variance per channel, so neither kind
of input dominates the residual stream.
"""

from __future__ import annotations

import torch
from torch import nn

from .llm import RMSNorm
from .resampler import Resampler


@torch.no_grad()
def initialize_for_training(model: nn.Module, seed: int | None = None) -> nn.Module:
    """Re-draw every weight of `model` (a MiniCPMV) in place; returns it."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def normal(tensor: torch.Tensor, std: float) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std)

    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            normal(module.weight, module.weight[0].numel() ** -0.5)  # fan-in: every input of one output
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):  # LLM tokens: unit variance; vision positions: like SigLIP
            normal(module.weight, 1.0 if name.startswith("llm") else module.embedding_dim**-0.5)
        elif isinstance(module, nn.MultiheadAttention):  # out_proj is an nn.Linear, drawn above
            normal(module.in_proj_weight, module.embed_dim**-0.5)
            module.in_proj_bias.zero_()
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        if isinstance(module, Resampler):
            normal(module.query, 0.02)  # ln_q normalises it: only the directions matter
            normal(module.proj, module.embed_dim**-0.5)  # unit-variance features, like the token embeddings
    return model


@torch.no_grad()
def localize_queries(resampler: Resampler, patch_side: int, sharpness: float = 3.5) -> Resampler:
    """Point each of the resampler's queries (a square grid of them) at its own block of a
    `patch_side` x `patch_side` patch grid: the queries become the 2-D sin-cos positions of their
    blocks' centres, in the keys' own layout, and the query and key projections pass positions
    through unchanged (each head gets sine and cosine of both axes at every n-th frequency, so
    its dot product peaks at the block). With `sharpness` 3.5 a query puts about three quarters
    of its attention on its block of a 448-px slice (16 x 16 patches, 64 queries) at once; learnt
    from a random start it put 27% there after 3000 steps of page reading, and the reading head
    behind it named 54% of the inked cells, against 75% after 400 steps from here (measured,
    research/demo-model-log.md). Training moves everything on from this start; where text must be read
    cell by cell, each token then holds its own block."""
    dim, heads, queries = resampler.embed_dim, resampler.attn.num_heads, resampler.query.shape[0]
    side = round(queries**0.5)
    if side * side != queries or patch_side % side or dim % (4 * heads):
        raise ValueError(
            f"cannot point {queries} queries of width {dim} ({heads} heads) at blocks of a "
            f"{patch_side}x{patch_side} grid"
        )
    block, quarter = patch_side // side, dim // 4
    centres = torch.arange(side, dtype=torch.float64) * block + (block - 1) / 2
    rows, cols = centres.repeat_interleave(side), centres.repeat(side)  # query i: row i // side, column i % side
    frequencies = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    by_col, by_row = cols[:, None] * frequencies, rows[:, None] * frequencies
    # the keys' layout (positions.sincos_2d): [sin, cos] of the column, then [sin, cos] of the row
    resampler.query.copy_(torch.cat([by_col.sin(), by_col.cos(), by_row.sin(), by_row.cos()], 1).float())
    resampler.ln_q.weight.fill_(1.0)
    resampler.ln_q.bias.zero_()
    order = [
        start + k
        for h in range(heads)
        for start in (0, quarter, 2 * quarter, 3 * quarter)
        for k in range(quarter)
        if k % heads == h
    ]  # head h: frequencies h, h + heads, ...
    passing = torch.eye(dim)[order] * sharpness
    resampler.attn.in_proj_weight[: 2 * dim].copy_(torch.cat([passing, passing]))
    resampler.attn.in_proj_bias[: 2 * dim].zero_()
    return resampler
