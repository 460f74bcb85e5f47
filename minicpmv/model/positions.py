"""Position ids of the NaViT SigLIP vision encoder (2.5 - 4.7), computed exactly as the official
float32 code does. `floor(i * 70 / n)` is *not* the same: float32 rounding moves some entries
(n = 25, 49, 50, ...; tests/fixtures/reference/navit_position_buckets.json)."""

from __future__ import annotations

import torch

NUM_PATCHES_PER_SIDE = 70  # 980 px / 14 px: the learned 70x70 position table


def navit_position_buckets(
    n: int, num_patches_per_side: int = NUM_PATCHES_PER_SIDE, rule: str = "arange"
) -> torch.Tensor:
    """Row (or column) of the position table used by each of `n` patches along one side.

    The official code places fractional coordinates into buckets with boundaries
    arange(1/70, 1, 1/70), with right=True. The coordinates differ by version ("rule"):
    - "arange" (2.5/2.6/4.5): arange(0, 1 - 1e-6, 1/n), where `n` is an int32 tensor element, so
      the step 1/n is itself rounded to float32 before arange: that rounding matters (n = 25);
    - "fraction" (4.6/4.7): arange(n) / n, which lands on the other side of a boundary for
      n = 25, 49, 50, ... (tests/fixtures/reference/navit_position_ids_46.json).
    """
    boundaries = torch.arange(1 / num_patches_per_side, 1.0, 1 / num_patches_per_side, dtype=torch.float32)
    if rule == "fraction":
        fractions = torch.arange(n, dtype=torch.float32) / n
    else:
        step = 1 / torch.tensor(n, dtype=torch.int32)  # float32 scalar tensor, as in the official code
        fractions = torch.arange(0, 1 - 1e-6, step, dtype=torch.float32)
    return torch.bucketize(fractions, boundaries, right=True)


def navit_position_ids(
    rows: int, cols: int, num_patches_per_side: int = NUM_PATCHES_PER_SIDE, rule: str = "arange"
) -> torch.Tensor:
    """Flat (rows * cols,) position ids of a crop, row-major: bucket(rows)[r] * 70 + bucket(cols)[c]."""
    row_ids = navit_position_buckets(rows, num_patches_per_side, rule)
    col_ids = navit_position_buckets(cols, num_patches_per_side, rule)
    return (row_ids[:, None] * num_patches_per_side + col_ids[None, :]).reshape(-1)


def _sincos(positions, dim: int):
    """[sin(p * w_k)..., cos(p * w_k)...] with w_k = 10000^(-k / (dim/2)), in numpy float32 as the
    official resampler computes it: positions (...,) -> (..., dim)."""
    import numpy as np

    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega  # (dim/2,)
    angles = np.asarray(positions, dtype=np.float32)[..., None] * omega  # (..., dim/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)


def sincos_2d(embed_dim: int, rows: int, cols: int) -> torch.Tensor:
    """(rows * cols, embed_dim) 2-D sin-cos embedding of a patch grid, row-major, as the official
    resampler computes it in numpy float32.

    Channel layout quirk: the first half encodes the *column* index and the second half the
    *row* index (the official meshgrid is w-first); each half is a 1-D sin-cos of width D/2.
    """
    import numpy as np

    col_grid, row_grid = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    half = embed_dim // 2
    table = np.concatenate([_sincos(col_grid, half), _sincos(row_grid, half)], axis=-1)  # (rows, cols, D)
    return torch.from_numpy(table.reshape(rows * cols, embed_dim)).float()


def sincos_1d(embed_dim: int, positions: list[int]) -> torch.Tensor:
    """(len(positions), embed_dim): 4.5's temporal embedding of frame time ids (one row each)."""
    return torch.from_numpy(_sincos(positions, embed_dim)).float()
