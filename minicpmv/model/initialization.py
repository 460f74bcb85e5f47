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
            normal(module.weight, 1.0 if name.startswith("llm") else module.embedding_dim ** -0.5)
        elif isinstance(module, nn.MultiheadAttention):  # out_proj is an nn.Linear, drawn above
            normal(module.in_proj_weight, module.embed_dim ** -0.5)
            module.in_proj_bias.zero_()
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        if isinstance(module, Resampler):
            normal(module.query, 0.02)  # ln_q normalises it: only the directions matter
            normal(module.proj, module.embed_dim ** -0.5)  # unit-variance features, like the token embeddings
    return model
