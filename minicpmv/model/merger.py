"""4.6/4.7's merger (official name `model.merger`; here it sits where the resampler of the older
versions sits, `resampler`): every 2x2 block of the vision tower's output grid becomes one LLM
token, through LayerNorm -> Linear -> exact (erf) GELU -> Linear. With `merger_times` > 1 the
first rounds keep the vision width and only the last projects into the LLM."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .vision import fold_windows

SIDE = 2  # the official merge_kernel_size (2, 2)


class DownsampleMLP(nn.Module):
    def __init__(self, width: int, out_width: int):
        super().__init__()
        merged = width * SIDE * SIDE
        self.pre_norm = nn.LayerNorm(merged, eps=1e-6)
        self.linear_1 = nn.Linear(merged, merged)
        self.linear_2 = nn.Linear(merged, out_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(self.pre_norm(x))))


class PatchMerger(nn.Module):
    def __init__(self, vision_width: int, llm_width: int, rounds: int = 1):
        super().__init__()
        widths = [vision_width] * (rounds - 1) + [llm_width]
        self.mlp = nn.ModuleList(DownsampleMLP(vision_width, width) for width in widths)

    def forward(self, hidden: torch.Tensor, tgt_sizes: torch.Tensor) -> torch.Tensor:
        """Padded tower output (B, Lmax, Dv) of crops of (rows, cols) patches -> the tokens of all
        crops in order, (sum rows*cols / 4^rounds, D)."""
        sizes = [tuple(size) for size in tgt_sizes.tolist()]
        tokens = [hidden[i, : rows * cols] for i, (rows, cols) in enumerate(sizes)]
        for mlp in self.mlp:
            if any(rows % SIDE or cols % SIDE for rows, cols in sizes):
                raise ValueError(f"merger: patch grids {sizes} do not divide into {SIDE}x{SIDE} blocks")
            # (rows/2 * cols/2, 4 * D) per crop, all crops through one call
            folded = [fold_windows(t, rows, cols, SIDE).flatten(1) for t, (rows, cols) in zip(tokens, sizes)]
            merged = mlp(torch.cat(folded))
            sizes = [(rows // SIDE, cols // SIDE) for rows, cols in sizes]
            tokens = list(merged.split([rows * cols for rows, cols in sizes]))
        return torch.cat(tokens)
