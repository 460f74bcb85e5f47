"""Where and in what precision a model runs: the device, the dtype, and the vision autocast."""

from __future__ import annotations

import torch

from .cpu import has_native_bf16
from .errors import ConfigError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """cuda, then mps, then cpu, unless one is named."""
    if device not in (None, "auto"):
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 matmuls are slow without native support), bfloat16 on CUDA, float16 on MPS."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return {"cuda": torch.bfloat16, "mps": torch.float16}.get(device.type, torch.float32)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def pick_vision_autocast(
    vision_dtype: str | None, model_dtype: torch.dtype, device: torch.device
) -> torch.dtype | None:
    """The dtype the vision encoder and resampler compute in under autocast, or None (the model's).

    "auto" (default): bfloat16 for a float32 model on a CPU with native bf16 arithmetic, where it
    is measured 2.2-2.4x faster than float32 (docs/benchmarks.md) at a 0.2% feature difference (the
    official checkpoints run in bf16 anyway); "float32" (the model's dtype) elsewhere. "int8"
    (the tower's linears in int8, quant.dynamic) computes the rest in the model's dtype.
    """
    if vision_dtype == "int8":
        return None  # measured: bf16 autocast around int8 linears is slower (conversions)
    if vision_dtype in (None, "auto"):
        native = device.type == "cpu" and model_dtype == torch.float32 and has_native_bf16()
        return torch.bfloat16 if native else None
    if vision_dtype not in DTYPES:
        raise ConfigError(f"vision_dtype: {vision_dtype!r} is not 'auto', 'int8' or one of {sorted(DTYPES)}")
    chosen = DTYPES[vision_dtype]
    return None if chosen == model_dtype else chosen
