"""The LLM's SwiGLU MLPs with quantized linears: a prefill's silu(gate(x)) * up(x) inside the up
projection's int8 GEMM.

ATen's silu and multiply each pass over the (rows, intermediate) floats: 26 MB a layer at 744
tokens of Qwen2-1.5B, about 5% of that prefill on an AVX2 CPU (profiled: silu 9.3 ms and the
multiply ~4.5 ms a layer of ~250). Here the GEMM multiplies each output tile by silu of the gate
projection's output while the tile is in registers, and writes the result over that output.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.blocks import MLP
from .linear import QuantizedLinear


class SwiGLUFusedMLP(MLP):
    """The model's MLP, the same linears and parameter names; the fused product where both
    projections are quantized layers of one kind (no hooks on the gate's) and the input takes
    their int8 GEMM (float32 inference on the CPU, prefill-sized), the model's forward elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_proj, up_proj = self.gate_proj, self.up_proj
        fused = (
            isinstance(up_proj, QuantizedLinear)
            and type(gate_proj) is type(up_proj)
            and not gate_proj._forward_hooks  # a hook may keep the output this writes over
            and x.dtype == torch.float32
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.compiler.is_compiling()
            and up_proj.igemm_applies(x)
        )
        if not fused:
            return super().forward(x)
        gate = gate_proj(x)  # a quantized layer's output is a tensor of its own: written over
        return self.down_proj(up_proj.times_silu(x, gate.contiguous()))


def fuse_swiglu(module: nn.Module) -> int:
    """Turn every MLP under `module` (a mixture of experts' too) into a SwiGLUFusedMLP in place;
    the number turned."""
    turned = [m for m in module.modules() if type(m) is MLP]
    for mlp in turned:
        mlp.__class__ = SwiGLUFusedMLP
    return len(turned)
