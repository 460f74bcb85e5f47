"""Dynamic int8 linears for compute-bound layers (the vision tower: 1024 patches per crop).

Weights are quantized per output channel and activations per row, both symmetric int8, and the
product runs in this package's integer kernel (kernels/igemm.c): on AVX-512 VNNI about 1.7x
oneDNN's bf16 and 3.3x float32. Without VNNI (AVX2 only) weights and activations take 7 bits
(activations from each row's own range, `narrow`), which saves vpmaddubsw's sign step and lets two
steps' products add in 16 bits: 1.8x the 8-bit product's speed (docs/benchmarks.md).
A whole real-size tower's output differs from float32's by 0.25% (relative L2, random weights)
with 8 bits and 0.48% with 7. The attention's two products run in int8 as well (kernels/attention.c:
K per key, V per feature, softmax probabilities in 8 bits per row, 7 on AVX2).

The layer keeps its float weight as a parameter: checkpoints load into it unchanged (also the
low-memory mode's reloading), and the int8 copy is derived from it at first use and again
whenever the weight tensor is replaced. Anywhere the kernel does not apply (no native library,
not CPU float32, training) it is an ordinary nn.Linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model.vision import NavitAttention, SiglipMLP
from . import native
from .linear import KERNEL, igemm_linear


def _kernels_run(x: torch.Tensor) -> bool:
    """A CPU input, and this package's native kernels in use (built here, not switched off)."""
    return x.device.type == "cpu" and KERNEL["mode"] == "auto" and native.library() is not None


class DynamicInt8Linear(nn.Linear):
    _packed: tuple | None = None  # (weight id, storage, version, packed, scales, colsum)
    gelu = False  # True in a GeluFusedMLP's fc1: the tanh GELU is part of this layer's output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._applies(x):
            out = super().forward(x)
            return F.gelu(out, approximate="tanh") if self.gelu else out
        packed, scales, colsum = self._int8()
        return igemm_linear(x, (packed, colsum, scales), self.bias, self.out_features, self.gelu, native.NARROW_BOTH)

    def _applies(self, x: torch.Tensor) -> bool:
        return (
            self.weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            and _kernels_run(x)
        )

    def _int8(self):
        weight = self.weight
        # a new tensor (reloaded) or one changed in place (version) is packed again; tensors made
        # under inference mode (the low-memory reloads) carry no version and cannot change
        version = 0 if weight.is_inference() else weight._version
        key = (id(weight), weight.untyped_storage().data_ptr(), version)
        if self._packed is None or self._packed[:3] != key:
            # 7 bits where the kernel narrows (native.igemm): it then adds two steps' products in 16 bits
            levels = 63 if native.igemm_narrows() else 127
            scales = weight.detach().abs().amax(dim=1).clamp_min(1e-12) / levels  # (N,)
            q = torch.round(weight.detach() / scales[:, None]).to(torch.int8).contiguous()
            packed, colsum = native.pack_int8(q)
            self._packed = (*key, packed, scales.float().contiguous(), colsum)
        return self._packed[3:]


class GeluFusedMLP(nn.Module):
    """A SigLIP MLP (fc1 -> tanh GELU -> fc2) whose GELU runs inside fc1's int8 product, on each
    output tile while it is in cache: one pass fewer over a crop's 1024 x 4304 activations (3.9 ms
    of ~33 per layer). The same fc1 and fc2, so parameter names and loading are unchanged."""

    def __init__(self, mlp: SiglipMLP):
        super().__init__()
        self.fc1, self.fc2 = mlp.fc1, mlp.fc2
        self.fc1.gelu = True

    def forward(self, x):
        return self.fc2(self.fc1(x))


# shorter sequences keep float attention (the int8 kernel's packing costs more than it saves)
MIN_KEYS = 64


class DynamicInt8Attention(NavitAttention):
    """A SigLIP attention whose Q K^T and P V are int8 products too (kernels/attention.c): after
    the int8 linears, float32 attention is a quarter of a crop's time on an AVX2 CPU. Where the
    kernel does not apply (see `_keys`) it is the float attention."""

    def forward(self, x, mask):
        keys = self._keys(x, mask)
        if keys is None:
            return super().forward(x, mask)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.out_proj(native.attend_int8(q, k, v, self.num_heads, keys))

    def _keys(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """Each crop's number of real keys, or None where the float path runs: not CPU float32
        inference, no native library, sequences too short to gain (4.6's 2x2 merger windows), or
        a mask other than padded keys at the end (NavitSiglip's)."""
        batch, length = x.shape[:2]
        if not (x.dtype == torch.float32 and not torch.is_grad_enabled() and length >= MIN_KEYS and _kernels_run(x)):
            return None
        if mask is None:
            return torch.full((batch,), length, dtype=torch.int64)
        if mask.shape != (batch, 1, 1, length):
            return None
        bias = mask[:, 0, 0, :]  # (B, L)
        valid = bias == 0
        keys = valid.sum(1)
        prefix = torch.arange(length)[None, :] < keys[:, None]
        hidden = bool((bias[~valid] < -1e30).all())  # finfo.min or -inf: no weight at all
        return keys.to(torch.int64) if hidden and bool((valid == prefix).all()) else None


def use_dynamic_int8(module: nn.Module) -> int:
    """Turn every nn.Linear under `module` into a DynamicInt8Linear sharing its parameters (the
    tanh-GELU MLPs into GeluFusedMLPs, the SigLIP attentions into DynamicInt8Attentions); the
    number of linears turned."""
    count = 0
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Linear, NavitAttention):
                kind = DynamicInt8Linear if type(child) is nn.Linear else DynamicInt8Attention
                replacement = kind.__new__(kind)
                replacement.__dict__.update(child.__dict__)  # same parameters, hooks and flags
                setattr(parent, name, replacement)
                count += kind is DynamicInt8Linear
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is SiglipMLP and child.tanh and type(child.fc1) is DynamicInt8Linear:
                setattr(parent, name, GeluFusedMLP(child))
    return count
