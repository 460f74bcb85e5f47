"""A quantized layer as the native code reads it: kernels/qgemm.h's linear_desc (its kernel kind,
the bound call's tensors and shape), built from the layer's bound decode call. The decode steps
(decode_step.py) and a prompt's grouped experts (moe.py) hand these to C."""

from __future__ import annotations

import ctypes

import torch

from .linear import NativeLinear

c_i64, c_ptr = ctypes.c_int64, ctypes.c_void_p


class LinearDesc(ctypes.Structure):
    _fields_ = [("kind", c_i64), ("w", c_ptr), ("scales", c_ptr), ("zeros", c_ptr), ("bias", c_ptr)] + [
        (name, c_i64) for name in ("N", "K", "group")
    ]


# linear_desc's kinds, in the order of qgemm.h's enum: the native function a layer's decode call
# makes, and how many of that call's leading arguments are tensors (the rest are N, K[, group])
KINDS = (("int4", 3), ("int4_tiles", 3), ("int8", 2), ("bf16", 1), ("int8_tiles", 2))
INT4_TILES = 1


def linear_kinds(lib) -> dict:
    """Function address -> (kind, tensor count)."""
    return {
        ctypes.cast(getattr(lib, f"minicpmv_linear_{name}"), c_ptr).value: (kind, tensors)
        for kind, (name, tensors) in enumerate(KINDS)
    }


def describe(module, kinds: dict) -> tuple[LinearDesc, object] | None:
    """(descriptor, the decode call it copies) of a native layer, binding it if it was not; None
    where the native kernels do not take it."""
    call = module.decode_call() if isinstance(module, NativeLinear) else None
    kind, tensors = (None, 0) if call is None else kinds.get(ctypes.cast(call.fn, c_ptr).value, (None, 0))
    bias = None if call is None else call.bias  # the tensor the call is bound to (float32 buffers)
    if kind is None or (bias is not None and not (bias.dtype == torch.float32 and bias.is_contiguous())):
        return None
    pointers, shape = call.middle[:tensors], call.middle[tensors:]
    desc = LinearDesc(
        kind,
        *pointers,
        *[None] * (3 - tensors),
        None if bias is None else bias.data_ptr(),
        *shape,
        *[0] * (3 - len(shape)),
    )
    return desc, call
