"""SigLIP vision towers (docs/model.md), with the official parameter names.

- `NavitSiglip` (2.5 - 4.7): crops of different sizes in one batch, padded to the longest; the
  position id of each patch comes from the bucketed 70x70 table (`positions.py`). 4.6/4.7 add a
  window-attention merger after one layer (`WindowMerger`, 16x mode): the later layers run on
  a grid of half the rows and columns.
- `TimmSiglip` (2.0): one crop at a time; the learned 27x27 position table is resized to the
  crop's patch grid with antialiased bicubic interpolation, as timm's `resample_abs_pos_embed`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig
from .embedding import embedding
from .positions import navit_position_buckets, navit_position_ids


def gelu(x: torch.Tensor, tanh: bool) -> torch.Tensor:
    return F.gelu(x, approximate="tanh" if tanh else "none")


class SiglipMLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.tanh = cfg.gelu_tanh

    def forward(self, x):
        return self.fc2(gelu(self.fc1(x), self.tanh))


def attend(q, k, v, num_heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention over (B, L, D) q/k/v; mask is additive (B, 1, L, L) or None."""
    batch, length, dim = q.shape
    q, k, v = (t.view(batch, -1, num_heads, dim // num_heads).transpose(1, 2) for t in (q, k, v))  # (B, H, L, hd)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, length, dim)


class NavitAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            nn.Linear(cfg.hidden_size, cfg.hidden_size) for _ in range(4)
        )

    def forward(self, x, mask):
        return self.out_proj(attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.num_heads, mask))


class NavitLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = NavitAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class NavitEmbeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, cfg.patch_size)
        self.position_embedding = embedding(cfg.num_positions_per_side**2, cfg.hidden_size)


class NavitEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(NavitLayer(cfg) for _ in range(cfg.num_layers))


def fold_windows(tokens: torch.Tensor, rows: int, cols: int, side: int) -> torch.Tensor:
    """A crop's row-major tokens (rows*cols, D) -> (rows/side * cols/side, side², D): each window
    of side x side patches, windows row-major, and inside a window (dy, dx) order."""
    grid = tokens.view(rows // side, side, cols // side, side, -1)  # (R, side, C, side, D)
    return grid.permute(0, 2, 1, 3, 4).reshape((rows // side) * (cols // side), side * side, -1)


class WindowMerger(nn.Module):
    """4.6/4.7's `vit_merger`: self-attention inside each 2x2 window (pre-norm, residual of the
    un-normalised tokens), then the 4 tokens concatenated -> LayerNorm -> MLP (tanh GELU), plus
    the mean of the 4 tokens: one token per window."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.side = cfg.window
        width, cells = cfg.hidden_size, cfg.window * cfg.window
        self.layer_norm1 = nn.LayerNorm(width, eps=cfg.layer_norm_eps)
        self.self_attn = NavitAttention(cfg)
        self.pre_norm = nn.LayerNorm(width * cells, eps=cfg.layer_norm_eps)
        self.linear_1 = nn.Linear(width * cells, cfg.intermediate_size * cells)
        self.linear_2 = nn.Linear(cfg.intermediate_size * cells, width)

    def forward(self, x: torch.Tensor, tgt_sizes: torch.Tensor) -> torch.Tensor:
        """(B, Lmax, D) padded crops of (rows, cols) patches -> (B, L'max, D), L' = rows*cols/side²."""
        sizes = tgt_sizes.tolist()
        # all windows of all crops in one batch: attention and the MLP act window by window
        windows = torch.cat([fold_windows(x[i, : r * c], r, c, self.side) for i, (r, c) in enumerate(sizes)])
        windows = windows + self.self_attn(self.layer_norm1(windows), None)  # (W, side², D)
        merged = self.linear_2(gelu(self.linear_1(self.pre_norm(windows.flatten(1))), True)) + windows.mean(1)
        counts = [r * c // self.side**2 for r, c in sizes]
        out = x.new_zeros((len(sizes), max(counts), x.shape[-1]))
        for i, part in enumerate(merged.split(counts)):
            out[i, : len(part)] = part
        return out


class NavitSiglip(nn.Module):
    """Variable-resolution SigLIP of 2.5-4.7: input (B, 3, P, P*Lmax) patch strips, output (B, Lmax, D)
    (4.6/4.7 with `merge`: (B, Lmax/4, D), the crops' grids halved by the window merger)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = NavitEmbeddings(cfg)
        self.encoder = NavitEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        if cfg.insert_layer_id >= 0:
            self.vit_merger = WindowMerger(cfg)

    def position_ids_and_mask(self, tgt_sizes: torch.Tensor, max_patches: int):
        """Position ids (B, Lmax) and the valid-patch mask (B, Lmax), or None when nothing is masked.

        2.6 masks padded keys and uses 2-D bucketed positions (padding gets id 0). 2.5's official
        code fills its patch mask wrongly (the whole row True), so nothing is masked and positions
        are 1-D buckets of Lmax shared by every crop; `faithful_idefics2_mask` reproduces that.
        """
        batch = tgt_sizes.shape[0]
        side = self.cfg.num_positions_per_side
        if self.cfg.faithful_idefics2_mask:
            return navit_position_buckets(max_patches, side).expand(batch, max_patches), None
        ids = torch.zeros((batch, max_patches), dtype=torch.long)
        for i, (rows, cols) in enumerate(tgt_sizes.tolist()):
            ids[i, : rows * cols] = navit_position_ids(rows, cols, side, self.cfg.position_rule)
        return ids, padding_mask(tgt_sizes, max_patches)

    def forward(self, pixel_values: torch.Tensor, tgt_sizes: torch.Tensor, merge: bool = False) -> torch.Tensor:
        max_patches = pixel_values.shape[-1] // self.cfg.patch_size
        position_ids, valid = self.position_ids_and_mask(tgt_sizes, max_patches)
        x = self.embeddings.patch_embedding(pixel_values)  # (B, D, 1, Lmax)
        # contiguous once here: the residual adds keep the layout of their input, so a transposed
        # view would make every LayerNorm and linear of the layers copy its input (0.3 s for 10 crops)
        x = x.flatten(2).transpose(1, 2).contiguous()  # (B, Lmax, D)
        x = x + self.embeddings.position_embedding(position_ids.to(x.device))
        mask = additive_mask(valid, x)
        for index, layer in enumerate(self.encoder.layers):
            x = layer(x, mask)
            if merge and index == self.cfg.insert_layer_id:
                x = self.vit_merger(x, tgt_sizes)
                tgt_sizes = tgt_sizes // self.cfg.window
                mask = additive_mask(padding_mask(tgt_sizes, x.shape[1]), x)
        return self.post_layernorm(x)


def padding_mask(tgt_sizes: torch.Tensor, length: int) -> torch.Tensor | None:
    """(B, length) True on each crop's real patches, or None when nothing is padded (the official
    code drops an all-True mask)."""
    counts = tgt_sizes[:, 0] * tgt_sizes[:, 1]
    valid = torch.arange(length)[None, :] < counts[:, None]
    return None if bool(valid.all()) else valid


def additive_mask(valid: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """Attention bias (B, 1, 1, L) that hides padded keys, from a (B, L) validity mask."""
    if valid is None:
        return None
    mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
    return mask.masked_fill(~valid.to(x.device), torch.finfo(x.dtype).min)[:, None, None, :]


class TimmAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # fused (q, k, v) along the output features
        return self.proj(attend(q, k, v, self.num_heads, None))


class TimmBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = TimmAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, cfg.patch_size)


class TimmSiglip(nn.Module):
    """2.0's SigLIP (timm layout): one crop (1, 3, H, W) -> (1, H/14 * W/14, D)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, cfg.hidden_size))
        self.blocks = nn.ModuleList(TimmBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def resampled_pos_embed(self, rows: int, cols: int) -> torch.Tensor:
        """(rows * cols, D): the learned square table resized by antialiased bicubic, in float32."""
        table = self.pos_embed
        side = int(math.sqrt(table.shape[1]))
        if rows == cols == side:
            return table[0]
        grid = table.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, side, side)
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=True)
        return grid.permute(0, 2, 3, 1).reshape(rows * cols, -1).to(table.dtype)  # (rows*cols, D)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        rows, cols = image.shape[-2] // self.cfg.patch_size, image.shape[-1] // self.cfg.patch_size
        x = self.patch_embed.proj(image).flatten(2).transpose(1, 2).contiguous()  # (1, rows*cols, D), as NavitSiglip
        x = x + self.resampled_pos_embed(rows, cols)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)
