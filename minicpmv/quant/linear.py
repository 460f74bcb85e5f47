"""Linear layers holding quantized weights. The forward pass uses torch's fused CPU kernels
where they exist (measured 3-4x faster than a float32 matrix-vector product here, with bf16
activations), else dequantizes on the fly: that reference path runs everywhere."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .schemes import dequantize_int4, dequantize_int8, unpack_int4

# "auto": fused kernels on CPU where the shapes allow; "reference": dequantize then matmul.
KERNEL = {"mode": os.environ.get("MINICPMV_QUANT_KERNEL", "auto")}


def _fused(x: torch.Tensor, shapes_ok: bool) -> bool:
    # Also for prefill: dequantizing the weight per call to use the float GEMM was measured
    # slower (Qwen2-1.5B shape, 128 tokens: int4 10 vs 34 tok/s), see docs/quantization.md.
    return shapes_ok and KERNEL["mode"] == "auto" and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros((out_features, in_features), dtype=torch.int8))
        self.register_buffer("scales", torch.zeros(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        # torch's int8 kernel reads 16 input features at a time and crashes on other widths
        self.kernel_ok = in_features % 16 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused(x, self.kernel_ok):
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # the kernel is fast in bf16
            out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales.to(torch.bfloat16))
            out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        else:
            out = F.linear(x, dequantize_int8(self.qweight, self.scales, x.dtype))
        return out if self.bias is None else out + self.bias.to(out.dtype)


class Int4Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros((out_features, in_features // 2), dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros((out_features, groups)))
        self.register_buffer("zeros", torch.zeros((out_features, groups)))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed = None  # the kernel's own layout, built on first use (it depends on the CPU)
        self.kernel_ok = out_features % 16 == 0  # torch's int4 packing needs it

    def _kernel_weights(self):
        if self._packed is None:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(self.qweight), 1)
            scales_zeros = torch.stack([self.scales.t(), self.zeros.t()], dim=-1)  # (G, N, 2)
            self._packed = (packed, scales_zeros.to(torch.bfloat16).contiguous())
        return self._packed

    def _apply(self, fn, recurse=True):
        self._packed = None  # moved or cast: rebuild the kernel layout from the stored weights
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._packed = None
        return super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fused(x, self.kernel_ok):
            packed, scales_zeros = self._kernel_weights()
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, self.group_size, scales_zeros)
            out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        else:
            out = F.linear(x, dequantize_int4(self.qweight, self.scales, self.zeros, x.dtype))
        return out if self.bias is None else out + self.bias.to(out.dtype)
