"""4.7's mixture of experts on a prompt, its int4 experts in two native calls a layer.

The model's SparseMoE runs each routed expert on its own tokens: three quantized linears an
expert, each a foreign call that forks the threads, quantizes its rows and streams a 0.6 MB
weight, with ~60 us of Python around them. A 64-token prompt reaches ~200 of a layer's 256
experts with ~2 rows each, so that is most of the layer's time. Here the pairs are routed as the
model routes them, each expert's rows gathered into one block, and kernels/tiles.c's
minicpmv_int4_experts runs every expert's gate and up projection in one parallel region, then
every down projection in another, the activations quantized once each. The products are the
per-expert kernels' own, so only silu's evaluation (ours against ATen's) differs from the model's
path. Measured in docs/quantization.md."""

from __future__ import annotations

import itertools

import torch

from ..model.qwen35 import SparseMoE
from . import native
from .linear import KERNEL
from .linear_desc import INT4_TILES, LinearDesc, describe, linear_kinds


class GroupedMoE(SparseMoE):
    """The model's SparseMoE (same parameters and routing); a prompt's routed experts through the
    grouped native call where every expert is a tiled int4 layer of one shape and the input a float32
    CPU tensor needing no gradient, the model's forward elsewhere (decoding takes the native step)."""

    _table: tuple | None = None  # (experts' descriptors (E, 3), the (module, call) pairs they copy)

    def __getstate__(self):
        """What copy.deepcopy and pickle take: no descriptors (this process's pointers)."""
        state = self.__dict__.copy()
        state.pop("_table", None)
        return state

    def _takes(self, x: torch.Tensor) -> bool:
        return (
            x.dtype == torch.float32
            and x.device.type == "cpu"
            and x.numel() > x.shape[-1]  # one token: one call an expert either way
            and KERNEL["mode"] == "auto"
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.compiler.is_compiling()
            and native.library() is not None
        )

    def _descriptors(self) -> LinearDesc | None:
        """The experts' descriptor table, rebuilt when a layer was rebound since (moved, reloaded,
        retiled), or None where an expert is not a plain tiled int4 layer."""
        if self._table is not None and all(m._decode is call and call.bound_to(m) for m, call in self._table[1]):
            return self._table[0]
        self._table = None
        modules = [p for e in self.experts for p in (e.gate_proj, e.up_proj, e.down_proj)]
        if any(m._forward_hooks or m._forward_pre_hooks for m in modules):
            return None
        kinds = linear_kinds(native.library())
        described = [describe(m, kinds) for m in modules]  # None: not a native layer
        if None in described:
            return None
        descs = [d for d, _ in described]
        # every expert as the first (tiles: widths multiples of 16, as the C code needs)
        same = (
            (d.kind, d.N, d.K, d.group, d.bias) == (INT4_TILES, f.N, f.K, f.group, None)
            for d, f in zip(descs, itertools.cycle(descs[:3]))
        )
        if not all(same):
            return None
        self._table = ((LinearDesc * len(descs))(*descs), [(m, c) for m, (_, c) in zip(modules, described)])
        return self._table[0]

    def forward(self, x):
        table = self._descriptors() if self._takes(x) else None
        if table is None:
            return super().forward(x)
        flat = x.reshape(-1, x.shape[-1])  # (N, D)
        tokens, scales, counts = self.route(flat)
        rows = flat[tokens]  # (N k, D): each expert's tokens in turn
        width = table[0].N
        gate, up = torch.empty(len(rows), width), torch.empty(len(rows), width)
        products = torch.empty_like(rows)
        # experts with this many rows take their own layers: the int8 GEMM, its weight repacked per
        # call, is as fast there (2048 tokens: 0.98x) and faster beyond (128 rows: 0.96x)
        below = self.experts[0].gate_proj.igemm_min_rows()
        status = native.library().minicpmv_int4_experts(
            table, len(self.experts), counts.data_ptr(), below, rows.data_ptr(), gate.data_ptr(), up.data_ptr(),
            products.data_ptr(),
        )  # fmt: skip
        native.checked(status)
        start = 0
        for expert, count in zip(self.experts, counts.tolist()):
            if count >= below:
                products[start : start + count] = expert(rows[start : start + count])
            start += count
        # added back in the model's order (expert by expert, tokens in order within each)
        out = torch.zeros_like(flat).index_add_(0, tokens, products.mul_(scales))
        return (out + self.shared(flat)).view_as(x)


def group_experts(module) -> int:
    """Turn every SparseMoE under `module` into a GroupedMoE in place; the number turned."""
    turned = [m for m in module.modules() if type(m) is SparseMoE]
    for moe in turned:
        moe.__class__ = GroupedMoE
    return len(turned)
