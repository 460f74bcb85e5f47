"""The decode step of a quantized LLM in one native call (kernels/decoder.c): one new token of one
sequence through every layer, with no torch op or module call per layer.

Installed on the LLM by quantize_model / prepare_quantized_layout (the model stays unaware: its
`run_layers` is wrapped, as compilation.py does). Each call takes the native path where it
applies and the model's own path otherwise (prompts, batches, masks, training, bfloat16
activations, layers the kernels do not take, a LoRA adapter); both give the same numbers up to
float32 rounding: the linears are the same kernels, the norms, rotary, attention and SwiGLU are
written out in C. What it saves is measured in docs/quantization.md.
"""

from __future__ import annotations

import ctypes

import torch

from ..model.blocks import MLP, KVCache, RMSNorm
from ..model.llm import Attention, DecoderLayer
from . import native
from .linear import NativeLinear

c_i64, c_ptr = ctypes.c_int64, ctypes.c_void_p
LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


class _Linear(ctypes.Structure):
    _fields_ = [("kind", c_i64), ("w", c_ptr), ("scales", c_ptr), ("zeros", c_ptr), ("bias", c_ptr)] + [
        (name, c_i64) for name in ("N", "K", "group")
    ]


class _Layer(ctypes.Structure):
    _fields_ = [(name, c_ptr) for name in ("norm1", "norm2", "q_norm", "k_norm")]
    _fields_ += [(name, _Linear) for name in LINEARS] + [("keys", c_ptr), ("values", c_ptr)]


class _Shape(ctypes.Structure):
    _fields_ = [(name, c_i64) for name in ("hidden", "heads", "kv_heads", "head_dim", "intermediate", "max_len")]
    _fields_ += [("eps", ctypes.c_double), ("residual_scale", ctypes.c_double)]


# decoder.c's linear kinds, in the order of its enum: the native function a layer's decode call
# makes, and how many of that call's leading arguments are tensors (the rest are N, K[, group])
KINDS = (("int4", 3), ("int4_tiles", 3), ("int8", 2), ("bf16", 1), ("int8_tiles", 2))


def _kinds(lib) -> dict:
    """Function address -> (kind, tensor count)."""
    return {
        ctypes.cast(getattr(lib, f"minicpmv_linear_{name}"), c_ptr).value: (kind, tensors)
        for kind, (name, tensors) in enumerate(KINDS)
    }


def _describe(module, kinds: dict) -> tuple[_Linear, object] | None:
    call = module.decode_call() if isinstance(module, NativeLinear) else None
    kind, tensors = (None, 0) if call is None else kinds.get(ctypes.cast(call.fn, c_ptr).value, (None, 0))
    bias = None if call is None else call.bias  # the tensor the call is bound to (float32 buffers)
    if kind is None or (bias is not None and not (bias.dtype == torch.float32 and bias.is_contiguous())):
        return None
    pointers, shape = call.middle[:tensors], call.middle[tensors:]
    desc = _Linear(
        kind,
        *pointers,
        *[None] * (3 - tensors),
        None if bias is None else bias.data_ptr(),
        *shape,
        *[0] * (3 - len(shape)),
    )
    return desc, call


def _float_vector(norm) -> int | None:
    ok = type(norm) is RMSNorm and norm.weight.dtype == torch.float32 and norm.weight.is_contiguous()
    return norm.weight.data_ptr() if ok else None


class NativeDecodeStep:
    """`llm.run_layers` with the native path for one token of one sequence in front of `fallback`."""

    def __init__(self, llm, fallback):
        self.llm, self.fallback = llm, fallback
        self.layers = None  # ctypes array of _Layer, built at the first step that can use it
        self.calls: list = []  # (module, decode call) whose pointers the descriptors copy

    def _build(self) -> bool:
        cfg, lib = self.llm.cfg, native.library()
        if (
            lib is None
            or cfg.rotary_dim != cfg.head_dim
            or any(size % 8 for size in (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size))
        ):
            return False
        kinds, layers, calls = _kinds(lib), [], []
        for layer in self.llm.model.layers:
            if type(layer) is not DecoderLayer or type(layer.self_attn) is not Attention or type(layer.mlp) is not MLP:
                return False
            attn, mlp = layer.self_attn, layer.mlp
            modules = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            described = [_describe(module, kinds) for module in modules]
            norms = [_float_vector(layer.input_layernorm), _float_vector(layer.post_attention_layernorm)]
            norms += [_float_vector(attn.q_norm), _float_vector(attn.k_norm)] if cfg.qk_norm else [0, 0]
            if None in described or None in norms:
                return False
            calls += [(module, call) for module, (_, call) in zip(modules, described)]
            layers.append(_Layer(*[n or None for n in norms], *[desc for desc, _ in described], None, None))
        self.layers, self.calls = (_Layer * len(layers))(*layers), calls
        self.shape = _Shape(
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.intermediate_size,
            0,
            cfg.rms_norm_eps,
            cfg.residual_scale,
        )
        return True

    def _ready(self) -> bool:
        """Descriptors that still hold every layer's current tensors (rebuilt when one rebinds)."""
        if self.layers is not None and all(m._decode is call and call.bound_to(m) for m, call in self.calls):
            return True
        first = self.llm.model.layers[0]
        if not isinstance(getattr(getattr(first, "self_attn", None), "q_proj", None), NativeLinear):
            return False  # float or adapted linears: the model's path, without a full check
        self.layers = None
        return self._build()

    def applies(self, x, cos, mask, cache, keep) -> bool:
        return (
            mask is None
            and keep is None
            and type(cache) is KVCache
            and x.shape[:2] == (1, 1)
            and cache.keys[0].shape[0] == 1
            and x.dtype is torch.float32
            and x.device.type == "cpu"
            and cos.dtype is torch.float32
            and cache.keys[0].dtype is torch.float32
            and cache.length < cache.max_len
            and not torch.is_grad_enabled()
            and self._ready()
        )

    def __call__(self, x, cos, sin, mask, cache, last_only, keep=None):
        if not self.applies(x, cos, mask, cache, keep):
            return self.fallback(x, cos, sin, mask, cache, last_only, keep)
        for layer, keys, values in zip(self.layers, cache.keys, cache.values):
            layer.keys, layer.values = keys.data_ptr(), values.data_ptr()
        self.shape.max_len = cache.max_len
        hidden = x.reshape(1, -1).clone()  # (1, D), updated in place
        cos, sin = cos.reshape(-1).contiguous(), sin.reshape(-1).contiguous()  # (head_dim,)
        status = native.library().minicpmv_decode_layers(
            ctypes.addressof(self.layers),
            len(self.layers),
            ctypes.byref(self.shape),
            hidden.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            cache.length,
        )
        native.checked(status)
        return self.llm.logits(hidden.view(1, 1, -1))


def install(llm) -> None:
    """Put the native decode step in front of the LLM's own (once)."""
    if not isinstance(llm.run_layers, NativeDecodeStep):
        llm.run_layers = NativeDecodeStep(llm, llm.run_layers)
