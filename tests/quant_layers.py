"""Quantized layers for the tests: filled from a float weight as quantize_model fills them, and
run with a chosen kernel mode."""

from minicpmv.quant import linear as qlinear
from minicpmv.quant.linear import Int8Linear
from minicpmv.quant.schemes import quantize_int4, quantize_int8


def filled(module, w):
    if isinstance(module, Int8Linear):
        module.qweight, module.scales = quantize_int8(w)
    else:  # float16 statistics, as quantize_model stores them
        packed, scales, zeros = quantize_int4(w, module.group_size)
        module.qweight, module.scales, module.zeros = packed, scales.half(), zeros.half()
    return module


def with_kernel(mode, fn):
    previous = qlinear.KERNEL["mode"]
    qlinear.KERNEL["mode"] = mode
    try:
        return fn()
    finally:
        qlinear.KERNEL["mode"] = previous
