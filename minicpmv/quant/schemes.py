"""Weight-only quantization schemes, as pure functions on (N, K) float weights.

- int8: symmetric, one scale per output channel: w ≈ q * scale, q in [-127, 127].
- int4: asymmetric, groups of `group_size` input columns: w ≈ (q - 8) * scale + zero, q in
  [0, 15], stored two per byte (even column in the low nibble). This is the layout torch's
  CPU int4 kernel expects once repacked, and close to llama.cpp's Q4_1.
"""

from __future__ import annotations

import torch

GROUP_SIZES = (32, 64, 128)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) -> int8 q (N, K), float32 scale (N,)."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-10)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()[:, None]).to(dtype)


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) -> packed uint8 (N, K/2), float32 scales and zeros (N, K/group_size)."""
    out_features, in_features = weight.shape
    if group_size not in GROUP_SIZES or in_features % group_size:
        raise ValueError(f"group_size must be one of {GROUP_SIZES} and divide {in_features}")
    groups = weight.float().reshape(out_features, in_features // group_size, group_size)  # (N, G, g)
    low, high = groups.amin(-1), groups.amax(-1)
    scales = ((high - low) / 15).clamp(min=1e-10)
    zeros = low + 8 * scales  # so that q = 8 maps to the middle of the range
    q = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8)
    q = q.reshape(out_features, in_features)
    return q[:, 0::2] | (q[:, 1::2] << 4), scales, zeros


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 -> (N, K) int32 in [0, 15]."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1).to(torch.int32)


def dequantize_int4(
    packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, dtype=torch.float32
) -> torch.Tensor:
    q = unpack_int4(packed).float()
    out_features, in_features = q.shape
    groups = q.reshape(out_features, scales.shape[1], -1)  # (N, G, g)
    w = (groups - 8) * scales.float()[..., None] + zeros.float()[..., None]
    return w.reshape(out_features, in_features).to(dtype)
