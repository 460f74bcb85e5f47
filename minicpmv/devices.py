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


def float_vision_dtype(model_dtype: torch.dtype, device: torch.device) -> str:
    """The float dtype "auto" picks for the vision parts: bfloat16 for a float32 model on a CPU
    with native bf16 arithmetic, where it is measured 2.2-2.4x faster than float32
    (docs/benchmarks.md) at a 0.2% feature difference (the official checkpoints run in bf16
    anyway); the model's own dtype elsewhere."""
    if device.type == "cpu" and model_dtype == torch.float32 and has_native_bf16():
        return "bfloat16"
    return str(model_dtype).removeprefix("torch.")


def untuned_vision_dtype(model_dtype: torch.dtype, device: torch.device) -> str:
    """What "auto" picks where `minicpmv tune` has not measured: `float_vision_dtype`, except
    "int8" for a float32 model on a CPU without native bf16 where this package's kernels run (the
    AVX2 machines): there the int8 tower is 2.1x HF float32 on the 10 crops of a 1344² image and
    1.2x our float32 on the demo model's, at a 0.48% feature difference on a random tower and
    no demo benchmark score moved beyond its interval (docs/benchmarks.md)."""
    chosen = float_vision_dtype(model_dtype, device)
    if chosen != "float32" or device.type != "cpu":
        return chosen
    from .quant import native  # builds the kernels on first use (cached)

    return "int8" if native.library() is not None else chosen


def pick_vision_dtype(
    vision_dtype: str | None, model_dtype: torch.dtype, device: torch.device, tuned: str | None = None
) -> str:
    """The vision parts' precision as a name: "int8" or a float dtype.

    "auto" (default): what `minicpmv tune` measured fastest on this machine (`tuned`), else
    `untuned_vision_dtype`; None: `untuned_vision_dtype` whatever was tuned; a dtype name, or
    "int8" (the tower's linears and attention products in int8, quant.dynamic): that one.
    """
    check_vision_dtype(vision_dtype)
    if vision_dtype == "auto" and tuned:
        return tuned
    if vision_dtype in (None, "auto"):
        return untuned_vision_dtype(model_dtype, device)
    return vision_dtype


def check_vision_dtype(vision_dtype: str | None) -> None:
    if vision_dtype not in (None, "auto", "int8", *DTYPES):
        raise ConfigError(f"vision_dtype: {vision_dtype!r} is not 'auto', 'int8' or one of {sorted(DTYPES)}")


def pick_vision_autocast(vision: str, model_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the vision encoder and resampler compute in under autocast for a precision that
    `pick_vision_dtype` chose, or None (the model's own)."""
    if vision == "int8":
        return None  # measured: bf16 autocast around int8 linears is slower (conversions)
    chosen = DTYPES.get(vision, model_dtype)
    return None if chosen == model_dtype else chosen
