"""The decode step of a quantized LLM in one native call: one new token of one sequence through
every layer, with no torch op or module call per layer (kernels/decoder.c for Llama / Qwen2 /
Qwen3 / MiniCPM layers, kernels/hybrid.c for Qwen3.5's attention and DeltaNet layers, with a
dense MLP or 4.7's mixture of experts: routing, the chosen experts and the shared one in C too).

Installed on the LLM by quantize_model / prepare_quantized_layout (the model stays unaware: its
`run_layers` is wrapped, as compilation.py does). Each call takes the native path where it
applies and the model's own path otherwise (prompts, batches, masks, training, bfloat16
activations, layers the kernels do not take, a LoRA adapter); both give the same numbers up to
float32 rounding: the linears are the same kernels, the norms, rotary, attention, the DeltaNet
recurrence, the router's softmax and top-k and SwiGLU are written out in C. What it saves is
measured in docs/quantization.md.
"""

from __future__ import annotations

import ctypes
import weakref

import torch
from torch import nn

from ..model.blocks import MLP, KVCache, RMSNorm
from ..model.llm import HYBRID, Attention, DecoderLayer
from ..model.qwen35 import (
    GatedAttention,
    GatedDeltaNet,
    GatedRMSNorm,
    HybridCache,
    Qwen35Layer,
    SparseMoE,
    ZeroCentredRMSNorm,
)
from . import native
from .linear import NativeLinear
from .linear_desc import LinearDesc, describe, linear_kinds
from .moe import GroupedMoE
from .swiglu import SwiGLUFusedMLP

c_i64, c_ptr = ctypes.c_int64, ctypes.c_void_p
LINEARS = ("q", "k", "v", "o", "gate", "up", "down")
DENSE_MLPS = (MLP, SwiGLUFusedMLP)  # the same function: down(silu(gate(x)) * up(x))
MOES = (SparseMoE, GroupedMoE)  # the same function too
DELTANET_LINEARS = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj")


class _Layer(ctypes.Structure):
    _fields_ = [(name, c_ptr) for name in ("norm1", "norm2", "q_norm", "k_norm")]
    _fields_ += [(name, LinearDesc) for name in LINEARS] + [("keys", c_ptr), ("values", c_ptr)]


class _Shape(ctypes.Structure):
    _fields_ = [(name, c_i64) for name in ("hidden", "heads", "kv_heads", "head_dim", "intermediate", "max_len")]
    _fields_ += [("eps", ctypes.c_double), ("residual_scale", ctypes.c_double)]


class _HybridLayer(ctypes.Structure):  # kernels/hybrid.c's hybrid_layer
    _fields_ = [("recurrent", c_i64), ("norm1", c_ptr), ("norm2", c_ptr)]
    _fields_ += [(name, LinearDesc) for name in ("gate", "up", "down")]
    _fields_ += [("q_norm", c_ptr), ("k_norm", c_ptr)] + [(name, LinearDesc) for name in ("q", "k", "v", "o")]
    _fields_ += [("keys", c_ptr), ("values", c_ptr)] + [(name, LinearDesc) for name in ("qkv", "z", "b", "a", "out")]
    _fields_ += [(name, c_ptr) for name in ("conv", "a_log", "dt_bias", "out_norm", "conv_state", "state")]
    _fields_ += [(name, c_ptr) for name in ("router", "shared_gate", "expert")]


class _HybridShape(ctypes.Structure):
    _fields_ = [
        (name, c_i64)
        for name in ("hidden", "mlp_width", "heads", "kv_heads", "head_dim", "rotary_dim", "max_len")
        + ("key_heads", "value_heads", "key_dim", "value_dim", "conv_kernel", "experts", "top_k")
    ] + [("eps", ctypes.c_double)]


# the shape structs' fields -> the LLMConfig attribute each holds (max_len is set per call,
# mlp_width by the step)
CONFIG_NAMES = {
    "hidden": "hidden_size",
    "heads": "num_heads",
    "kv_heads": "num_kv_heads",
    "head_dim": "head_dim",
    "intermediate": "intermediate_size",
    "rotary_dim": "rotary_dim",
    "eps": "rms_norm_eps",
    "residual_scale": "residual_scale",
    "key_heads": "linear_key_heads",
    "value_heads": "linear_value_heads",
    "key_dim": "linear_key_head_dim",
    "value_dim": "linear_value_head_dim",
    "conv_kernel": "linear_conv_kernel",
    "experts": "num_experts",
    "top_k": "experts_per_token",
}


def _shape(kind: type, cfg):
    """A shape struct filled from the config, by field name."""
    return kind(**{name: getattr(cfg, CONFIG_NAMES[name]) for name, _ in kind._fields_ if name in CONFIG_NAMES})


def _float32(t: torch.Tensor | None) -> bool:
    return t is not None and t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"


class NativeStep:
    """`llm.run_layers` with a native path for one token of one sequence in front of `fallback`.
    Subclasses describe the layers (`_describe_layers`) and point them at the cache (`_bind`)."""

    cache_type: type = KVCache

    def __init__(self, llm, fallback):
        self.llm, self.fallback = llm, fallback
        self.layers = None  # ctypes array of layer descriptors, built at the first step that can use it
        self.calls: list = []  # (module, decode call) whose pointers the descriptors copy
        self.vectors: list = []  # (module, parameter name, tensor): float32 weights read in place
        self.follows = None  # (weak cache, its length at the next token): the generation this step is in

    def __getstate__(self):
        """What copy.deepcopy and pickle take: the step without its descriptors, which hold this
        process's pointers to the original's tensors; a copy rebuilds them at its first step."""
        state = self.__dict__.copy()
        state.update(layers=None, calls=[], vectors=[], follows=None, tables=[])
        return state

    def _build(self) -> bool:
        cfg, lib = self.llm.cfg, native.library()
        if lib is None or cfg.hidden_size % 8 or cfg.head_dim % 8:
            return False
        self.calls, self.vectors = [], []
        layers = self._describe_layers(linear_kinds(lib))
        if layers is None:
            self.layers = None
            return False
        self.layers = (type(layers[0]) * len(layers))(*layers)
        return True

    def _linears(self, modules, kinds) -> list | None:
        described = [describe(module, kinds) for module in modules]
        if None in described:
            return None
        self.calls += [(module, call) for module, (_, call) in zip(modules, described)]
        return [desc for desc, _ in described]

    def _vector(self, module, name: str = "weight", kind: type | None = None) -> int | None:
        """The address of a float32 weight the C code reads in place (None: not one it can read)."""
        tensor = getattr(module, name, None)
        if (kind is not None and type(module) is not kind) or not _float32(tensor):
            return None
        self.vectors.append((module, name, tensor))
        return tensor.data_ptr()

    def _ready(self) -> bool:
        """Descriptors that still hold every layer's current tensors (rebuilt when one rebinds)."""
        calls_bound = all(m._decode is call and call.bound_to(m) for m, call in self.calls)
        if self.layers is not None and calls_bound and all(getattr(m, n) is t for m, n, t in self.vectors):
            return True
        if not self._native_linears():
            return False  # float or adapted linears: the model's path, without a full check
        return self._build()

    def _current(self, cache) -> bool:
        """`_ready`, checked in full at a generation's first native token only: 4.7's MoE binds ~8000
        linears, 14 ms of Python a token. The next tokens of the same cache take the descriptors
        as they are; a tensor replaced mid-generation stays alive in its call (read stale, never
        freed) until the next generation rebuilds."""
        if self.follows is not None and self.follows[0]() is cache and self.follows[1] == cache.length:
            return True
        return self._ready()

    def applies(self, x, cos, mask, cache, keep) -> bool:
        return (
            mask is None
            and keep is None
            and type(cache) is self.cache_type
            and x.shape[:2] == (1, 1)
            and cache.keys[0].shape[0] == 1
            and x.dtype is torch.float32
            and x.device.type == "cpu"
            and cos.dtype is torch.float32
            and cos.numel() == self.llm.cfg.rotary_dim
            and cache.keys[0].dtype is torch.float32
            and cache.length < cache.max_len
            and not torch.is_grad_enabled()
            and self._current(cache)
            and self._bind(cache)
        )

    def __call__(self, x, cos, sin, mask, cache, last_only, keep=None):
        if not self.applies(x, cos, mask, cache, keep):
            return self.fallback(x, cos, sin, mask, cache, last_only, keep)
        self.shape.max_len = cache.max_len
        hidden = x.reshape(1, -1).clone()  # (1, D), updated in place
        cos, sin = cos.reshape(-1).contiguous(), sin.reshape(-1).contiguous()  # (rotary dims,)
        status = self._entry(native.library())(
            ctypes.addressof(self.layers),
            len(self.layers),
            ctypes.byref(self.shape),
            hidden.data_ptr(),
            cos.data_ptr(),
            sin.data_ptr(),
            cache.length,
        )
        native.checked(status)
        self.follows = (weakref.ref(cache), cache.length + 1)  # the model advances the cache by this token
        return self.llm.logits(hidden.view(1, 1, -1))


class NativeDecodeStep(NativeStep):
    """Llama / Qwen2 / Qwen3 / MiniCPM layers: kernels/decoder.c."""

    def _entry(self, lib):
        return lib.minicpmv_decode_layers

    def _native_linears(self) -> bool:
        return isinstance(getattr(getattr(self.llm.model.layers[0], "self_attn", None), "q_proj", None), NativeLinear)

    def _describe_layers(self, kinds) -> list | None:
        cfg, layers = self.llm.cfg, []
        if cfg.rotary_dim != cfg.head_dim or cfg.intermediate_size % 8:
            return None
        for layer in self.llm.model.layers:
            if (
                type(layer) is not DecoderLayer
                or type(layer.self_attn) is not Attention
                or type(layer.mlp) not in DENSE_MLPS
            ):
                return None
            attn, mlp = layer.self_attn, layer.mlp
            modules = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            norms = [
                self._vector(norm, kind=RMSNorm) for norm in (layer.input_layernorm, layer.post_attention_layernorm)
            ]
            norms += [self._vector(n, kind=RMSNorm) for n in (attn.q_norm, attn.k_norm)] if cfg.qk_norm else [0, 0]
            linears = self._linears(modules, kinds)
            if linears is None or None in norms:
                return None
            layers.append(_Layer(*[n or None for n in norms], *linears, None, None))
        self.shape = _shape(_Shape, cfg)
        return layers

    def _bind(self, cache) -> bool:
        for layer, keys, values in zip(self.layers, cache.keys, cache.values):
            layer.keys, layer.values = keys.data_ptr(), values.data_ptr()
        return True


class HybridDecodeStep(NativeStep):
    """Qwen3.5's gated attention and Gated DeltaNet layers with a dense MLP (4.6) or a mixture of
    experts (4.7's MoE variant): kernels/hybrid.c."""

    cache_type = HybridCache

    def _entry(self, lib):
        return lib.minicpmv_decode_hybrid

    def _native_linears(self) -> bool:
        first = self.llm.model.layers[0]
        mixer = first.linear_attn.in_proj_qkv if first.recurrent else first.self_attn.q_proj
        return isinstance(mixer, NativeLinear)

    def _zero_centred(self, norm) -> int | None:
        return self._vector(norm, kind=ZeroCentredRMSNorm)

    def _attention(self, attn, kinds) -> dict | None:
        if type(attn) is not GatedAttention:
            return None
        linears = self._linears((attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj), kinds)
        norms = self._zero_centred(attn.q_norm), self._zero_centred(attn.k_norm)
        if linears is None or None in norms:
            return None
        return dict(zip(("q", "k", "v", "o"), linears), q_norm=norms[0], k_norm=norms[1])

    def _deltanet(self, net, kinds) -> dict | None:
        if type(net) is not GatedDeltaNet or type(net.norm) is not GatedRMSNorm:
            return None
        linears = self._linears([getattr(net, name) for name in DELTANET_LINEARS], kinds)
        if linears is None:
            return None
        vectors = {
            "conv": self._vector(net.conv1d),
            "a_log": self._vector(net, "A_log"),
            "dt_bias": self._vector(net, "dt_bias"),
            "out_norm": self._vector(net.norm),
        }
        if None in vectors.values():
            return None
        return dict(zip(("qkv", "z", "b", "a", "out"), linears)) | vectors

    def _swiglu(self, mlps, kinds) -> list | None:
        """Each MLP's gate, up and down descriptors, in that order (widths the C loops take)."""
        if any(type(mlp) not in DENSE_MLPS or mlp.gate_proj.out_features % 8 for mlp in mlps):
            return None
        return self._linears([proj for mlp in mlps for proj in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)], kinds)

    def _mlp(self, mlp, kinds) -> dict | None:
        """A dense MLP's linears, or a mixture of experts': the shared expert's in their place, the
        routed experts' in a table of their own, the router's and the shared gate's float rows."""
        cfg = self.llm.cfg
        if type(mlp) not in MOES:  # a dense MLP (_swiglu refuses any other module)
            linears = self._swiglu([mlp], kinds)
            return None if linears is None else dict(zip(("gate", "up", "down"), linears))
        if any(type(g) is not nn.Linear or g.bias is not None for g in (mlp.gate, mlp.shared_expert_gate)):
            return None
        if mlp.top_k != cfg.experts_per_token or len(mlp.experts) != cfg.num_experts:
            return None
        shared, routed = self._swiglu([mlp.shared_expert], kinds), self._swiglu(mlp.experts, kinds)
        router, shared_gate = self._vector(mlp.gate), self._vector(mlp.shared_expert_gate)
        if shared is None or routed is None or None in (router, shared_gate):
            return None
        table = (LinearDesc * len(routed))(*routed)  # (experts, 3), read through a pointer
        self.tables.append(table)
        found = dict(router=router, shared_gate=shared_gate, expert=ctypes.addressof(table))
        return dict(zip(("gate", "up", "down"), shared)) | found

    def _describe_layers(self, kinds) -> list | None:
        cfg, layers = self.llm.cfg, []
        self.tables = []
        if cfg.linear_key_head_dim % 8 or cfg.linear_value_head_dim % 8 or cfg.rotary_dim % 2:
            return None
        for layer in self.llm.model.layers:
            if type(layer) is not Qwen35Layer:
                return None
            mlp = self._mlp(layer.mlp, kinds)
            norms = self._zero_centred(layer.input_layernorm), self._zero_centred(layer.post_attention_layernorm)
            if layer.recurrent:
                mixer = self._deltanet(layer.linear_attn, kinds)
            else:
                mixer = self._attention(layer.self_attn, kinds)
            if mlp is None or None in norms or mixer is None:
                return None
            layers.append(_HybridLayer(int(layer.recurrent), *norms, **mlp, **mixer))
        self.shape = _shape(_HybridShape, cfg)
        gates = [layer.gate for layer in layers] + [table[i] for table in self.tables for i in range(0, len(table), 3)]
        self.shape.mlp_width = max(gate.N for gate in gates)  # the C code's scratch for any MLP
        return layers

    def _bind(self, cache) -> bool:
        for index, layer in enumerate(self.layers):
            if layer.recurrent:
                conv, state = cache.conv_states[index], cache.recurrent_states[index]
                if not (_float32(conv) and _float32(state)):
                    return False  # no prompt through this cache yet, or another precision
                layer.conv_state, layer.state = conv.data_ptr(), state.data_ptr()
            else:
                layer.keys, layer.values = cache.keys[index].data_ptr(), cache.values[index].data_ptr()
        return True


def install(llm) -> None:
    """Put the native decode step in front of the LLM's own (once)."""
    if not isinstance(llm.run_layers, NativeStep):
        step = HybridDecodeStep if llm.cfg.family == HYBRID else NativeDecodeStep
        llm.run_layers = step(llm, llm.run_layers)
