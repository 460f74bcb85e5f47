"""Linear layers holding quantized (or bfloat16) weights. On CPU the forward pass picks, in this order:
- "native": this package's kernels (native.py, built for the machine at first use), the fastest
  measured (docs/quantization.md): int8-activation products for decoding, from weight tiles
  (NativeLinear) where the layer's shape allows; for prefill-sized
  inputs the weight repacked per call for the int8 x int8 GEMM (kernels/igemm.c, 1.5x oneDNN's
  bf16 on the widened weight, which a few dozen rows still use on CPUs with native bf16);
- "torch": torch's fused weight-only kernels with bf16 activations;
- "reference": dequantize, then a float matmul: runs on any device and is the ground truth.
`MINICPMV_QUANT_KERNEL` = auto (default: the first that applies) | torch | reference."""

from __future__ import annotations

import os
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from ..cpu import has_native_bf16
from ..memory import to_huge_pages
from . import native
from .schemes import dequantize_int4, dequantize_int8, unpack_int4

KERNEL = {"mode": os.environ.get("MINICPMV_QUANT_KERNEL", "auto")}


def _on_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)


def _native(x: torch.Tensor, shapes_ok: bool) -> bool:
    return shapes_ok and KERNEL["mode"] == "auto" and _on_cpu(x) and native.library() is not None


def _fused(x: torch.Tensor, shapes_ok: bool) -> bool:
    # Also for prefill: dequantizing the weight per call to use the float GEMM was measured
    # slower (Qwen2-1.5B shape, 128 tokens: int4 10 vs 34 tok/s), see docs/quantization.md.
    return shapes_ok and KERNEL["mode"] in ("auto", "torch") and _on_cpu(x)


def _flat_float32(x: torch.Tensor, width: int) -> torch.Tensor:
    return x.reshape(-1, width).to(torch.float32).contiguous()


# From this many rows on (prefill), widening the weight to bf16 once per call and running one
# bf16 GEMM beats per-group integer products 4x (Qwen2-1.5B MLP shape, 128 rows: 7.3 vs 30 ms).
WIDEN_MIN_ROWS = 32


# From this many rows on, repacking the weight for the int8 x int8 GEMM once per call beats the
# bf16 GEMM on the widened weight (Qwen3.5-0.8B MLP, 700 rows: 10.0 vs 14.8 ms with the repack)
# and the decoding tiles (a Qwen2-1.5B prefill, int4 and int8 tiles, AVX2 and AVX-512: tiles
# ahead at 56-63 rows, the GEMM from 64)
IGEMM_MIN_ROWS = 64
# ... and an int8 weight whose own kernel has no vpdpbusd (AVX2: vpmaddubsw on |w| with the sign
# of w moved onto x) or keeps the stored layout, 4 rows a pass: the GEMM from 32 rows (AVX2 tiles
# on an AMD EPYC Zen 3, 8960x1536 and 1536x8960, tiles / GEMM time: 16 rows 0.79-0.85, 24 rows
# 0.92-0.94, 32 rows 1.00-1.01, 40-56 rows 0.89-1.10; the stored kernel in the AVX2 emulation,
# Qwen2-1.5B prefill tok/s stored vs GEMM: 24 rows 59.5 vs 61.1, 40 rows 59.6 vs 70.2)
FOUR_ROW_INT8_IGEMM_MIN_ROWS = 32


def _widen(x: torch.Tensor, width: int) -> bool:
    return x.numel() // width >= WIDEN_MIN_ROWS and has_native_bf16()


def igemm_linear(
    x: torch.Tensor,
    packed: tuple,
    bias: torch.Tensor | None,
    out_features: int,
    gelu: bool = False,
    narrow: int = native.WIDE,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """x (..., K) through the int8 x int8 GEMM with `packed` = (weight, colsum, per-channel
    scales): activations quantized per row, as the decode kernels do; `gelu` the tanh GELU after;
    `narrow`: what the weights allow (`native.igemm`); `gate` (..., N) contiguous float32: the
    outputs times silu(gate), written into it."""
    weight, colsum, scales = packed
    flat = _flat_float32(x, x.shape[-1])
    bias = None if bias is None else bias.float().contiguous()
    gate = None if gate is None else gate.view(-1, out_features)
    out = native.igemm(flat, weight, scales, colsum, bias, gelu, narrow, gate)
    return out.to(x.dtype).reshape(*x.shape[:-1], out_features)


def _widened_linear(x: torch.Tensor, weight_bf16: torch.Tensor, out_features: int) -> torch.Tensor:
    out = F.linear(x.reshape(-1, weight_bf16.shape[1]).to(torch.bfloat16), weight_bf16)
    return out.to(x.dtype).reshape(*x.shape[:-1], out_features)


class DecodeCall:
    """A native call bound to one layer's tensors: pointers are resolved once, so a decoded token
    costs one foreign call and one allocation per linear. (Profiled: the general path spent
    ~20 us of Python per call, and a Qwen2-1.5B token makes 197 calls.)"""

    __slots__ = ("fn", "middle", "in_features", "out_features", "bias", "source", "keep", "max_rows")

    def __init__(self, module: nn.Module, fn, tensors: tuple, extra: tuple, max_rows: int):
        self.fn, self.keep, self.max_rows = fn, tensors, max_rows
        self.middle = tuple(t.data_ptr() for t in tensors) + extra
        self.in_features, self.out_features = module.in_features, module.out_features
        self.bias, self.source = module.bias, tensors[0]

    def bound_to(self, module: nn.Module) -> bool:
        """Still the module's own tensors (not reassigned since binding)."""
        return module._buffers.get("qweight", module._buffers.get("weight")) is self.source and module.bias is self.bias

    def applies(self, module: nn.Module, x: torch.Tensor) -> bool:
        """The decode fast path: small contiguous float32 CPU input, native kernels on."""
        return (
            x.dtype is torch.float32
            and x.device.type == "cpu"
            and x.is_contiguous()
            and x.numel() < self.max_rows * self.in_features
            and KERNEL["mode"] == "auto"
            and self.bound_to(module)
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., K) contiguous float32 -> (..., N) float32, bias added."""
        out = torch.empty((*x.shape[:-1], self.out_features))
        native.checked(self.fn(x.data_ptr(), x.numel() // self.in_features, *self.middle, out.data_ptr()))
        return out if self.bias is None else out.add_(self.bias)


# Layers a compiled graph calls by key: torch.compile cannot trace a foreign call, so each layer
# enters the graph as one opaque op (below) instead of breaking it ~200 times per decoded token.
_COMPILED_LAYERS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


@torch.library.custom_op("minicpmv::native_linear", mutates_args=())
def opaque_linear(x: torch.Tensor, key: int, out_features: int) -> torch.Tensor:
    """The layer registered under `key` applied to x, run eagerly (its usual kernel choice)."""
    layer = _COMPILED_LAYERS.get(key)
    if layer is None:
        raise RuntimeError("a compiled graph calls a quantized layer that no longer exists; compile the model again")
    return layer(x)


@opaque_linear.register_fake
def _opaque_linear_shape(x: torch.Tensor, key: int, out_features: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


class NativeLinear(nn.Module):
    """What the three weight layouts share: the bound native call (and, in subclasses, other
    tensors derived from the stored ones), dropped whenever those are moved, cast or reloaded.

    Decoding tiles: with the native kernels, an int4 or int8 layer whose output count is a
    multiple of 16 rearranges `tile_names` in place into tiles of 16 output rows the first time
    it runs natively (kernels/tiles.c: an output row per vector lane, one sequential stream;
    measured in docs/quantization.md) and keeps them for decode and prefill alike. Whatever needs the stored layout (the torch and
    reference paths, moving or casting, loading, saving: a state dict gets a stored copy) puts it
    back first. `qweight` of a tiled layer therefore holds tiles: read weights through a state dict.

    The weights a decoded token streams (`streamed_names`) move into huge pages when the native
    call is bound (memory.huge_page_empty), unless they were allocated there."""

    _decode: DecodeCall | None = None
    compile_key: int | None = None
    native_ok = True  # the native kernels take this layer's width
    tile_names: tuple[str, ...] = ()
    streamed_names: tuple[str, ...] = ()
    _tiled: tuple | None = None  # weak references to the buffers while they hold tiles
    _caches = ("_decode", "_tiled")  # attributes a copy or a pickle does not take

    def prepare_for_compile(self) -> None:
        """Let torch.compile call this layer as one opaque op (see opaque_linear)."""
        self.compile_key = id(self)
        _COMPILED_LAYERS[self.compile_key] = self

    def _bind(self) -> DecodeCall:
        raise NotImplementedError

    def _drop_caches(self) -> None:
        """Also before moving, casting or loading: those need the stored layout."""
        if self.tiled():
            self._set_tiles(False)
        self._decode = None

    def _tile_buffers(self) -> tuple:
        return tuple(self._buffers[name] for name in self.tile_names)

    def tiled(self) -> bool:
        """Whether the buffers hold decoding tiles now (the same tensors that were rearranged)."""
        return self._tiled is not None and all(ref() is t for ref, t in zip(self._tiled, self._tile_buffers()))

    def _can_tile(self) -> bool:
        return False

    def _rearrange(self, tensors: tuple, to_tiles: bool) -> None:
        raise NotImplementedError

    def _set_tiles(self, tiles: bool) -> None:
        if self.tiled() == tiles:
            return
        self._decode = None
        self._rearrange(self._tile_buffers(), tiles)
        self._tiled = tuple(weakref.ref(t) for t in self._tile_buffers()) if tiles else None

    def _stored_copies(self) -> dict[str, torch.Tensor]:
        """The tiled buffers copied back into the stored layout (empty while not tiled)."""
        if not self.tiled():
            return {}
        stored = tuple(t.detach().clone() for t in self._tile_buffers())
        self._rearrange(stored, False)
        return dict(zip(self.tile_names, stored))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # a stored copy: the tensors handed out must not change at the next decode
        destination.update({prefix + name: t for name, t in self._stored_copies().items()})

    def __getstate__(self):
        """What copy.deepcopy and pickle take: the stored layout, and none of the caches (a bound
        call holds this process's pointers; the tile references name this layer's tensors)."""
        state = self.__dict__.copy()
        state["_buffers"] = {**self._buffers, **self._stored_copies()}
        state.update(dict.fromkeys(self._caches))
        return state

    def _apply(self, fn, recurse=True):
        self._drop_caches()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._drop_caches()
        return super()._load_from_state_dict(*args, **kwargs)

    def decode_call(self) -> DecodeCall | None:
        """This layer's native call for a decoded token, bound now if it was not, or None where
        the native kernels do not take this layer (kernels off, a width they do not take, not on
        the CPU)."""
        stored = self._buffers.get("qweight", self._buffers.get("weight"))
        usable = self.native_ok and stored is not None and stored.device.type == "cpu"
        if not (usable and KERNEL["mode"] == "auto" and native.library() is not None):
            return None
        return self._bound()

    def _bound(self) -> DecodeCall:
        if self._decode is None or not self._decode.bound_to(self):
            self._place_streamed()
            self._decode = self._bind()
        return self._decode

    def _place_streamed(self) -> None:
        tiled = self.tiled()
        for name in self.streamed_names:
            self._buffers[name] = to_huge_pages(self._buffers[name])
        if tiled:  # the same tiles, in their new place
            self._tiled = tuple(weakref.ref(t) for t in self._tile_buffers())

    def _native_product(self, x: torch.Tensor) -> torch.Tensor:
        """Any input through the native kernels (bias included), binding the call on first use."""
        return self._bound()(_flat_float32(x, self.in_features)).to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compile_key is not None and torch.compiler.is_compiling():
            return opaque_linear(x, self.compile_key, self.out_features)
        if self._decode is not None and self._decode.applies(self, x):
            return self._decode(x)
        return self._forward(x)


class QuantizedLinear(NativeLinear):
    """The path choice int8 and int4 weights share; subclasses give the kernels and weights."""

    def _decode_kernel(self, tiled: bool) -> tuple:
        """(native function, tensors, shape arguments) of a decoded token."""
        raise NotImplementedError

    def _igemm_weight(self) -> tuple:
        """(packed, colsum, per-channel scales) for the int8 x int8 GEMM, built per call."""
        raise NotImplementedError

    def _igemm_narrow(self) -> int:
        """What `_igemm_weight`'s integers allow `native.igemm` (8 bits, unless a subclass says)."""
        return native.WIDE

    def _widened_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def _torch_product(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _can_tile(self) -> bool:
        return self.out_features % native.TILE_ROWS == 0 and all(
            t.device.type == "cpu" and t.is_contiguous() for t in self._tile_buffers()
        )

    def _bind(self) -> DecodeCall:
        if self._can_tile():
            self._set_tiles(True)
        tiled = self.tiled()
        fn, tensors, shape = self._decode_kernel(tiled)
        # rows below the int8 x int8 GEMM's (or the widened weight's) stay in this kernel
        rows = self.igemm_min_rows()
        return DecodeCall(self, fn, tensors, shape, rows if tiled else min(rows, WIDEN_MIN_ROWS))

    def _igemm_packed(self) -> tuple:
        """`_igemm_weight`, from the decoding tiles where this layer can have them, made now if
        this is its first native call (a prompt of 64 tokens or more before any decoding): the
        repack from the tiles is vectorized, from the stored layout a byte loop (an 8192 x 2048
        int4 weight: 1.1 against 6.2 ms a call, most of a 64-row product)."""
        if self._can_tile():
            self._bound()
        return self._igemm_weight()

    def igemm_min_rows(self) -> int:
        """Rows from which the int8 x int8 GEMM, its weight repacked per call, beats this layer's own kernel."""
        return IGEMM_MIN_ROWS

    def igemm_applies(self, x: torch.Tensor) -> bool:
        """Whether x (a prefill-sized input, native kernels on) takes the int8 x int8 GEMM."""
        return _native(x, self.native_ok) and x.numel() // self.in_features >= self.igemm_min_rows()

    def times_silu(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """silu(gate) * self(x), the multiply in the GEMM's epilogue and the result written into
        `gate` (contiguous float32, this layer's output shape), where `igemm_applies(x)`."""
        return igemm_linear(
            x, self._igemm_packed(), self.bias, self.out_features, narrow=self._igemm_narrow(), gate=gate
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        native_ok = _native(x, self.native_ok)
        if self.igemm_applies(x):
            return igemm_linear(x, self._igemm_packed(), self.bias, self.out_features, narrow=self._igemm_narrow())
        if native_ok and (self.tiled() or self._can_tile() or not _widen(x, self.in_features)):
            return self._native_product(x)
        if native_ok:
            out = _widened_linear(x, self._widened_weight(), self.out_features)
        else:
            self._set_tiles(False)
            out = self._torch_product(x)
        return out if self.bias is None else out + self.bias.to(out.dtype)


class Int8Linear(QuantizedLinear):
    """int8 weights with one float32 scale per output row."""

    tile_names = streamed_names = ("qweight",)

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros((out_features, in_features), dtype=torch.int8))
        self.register_buffer("scales", torch.zeros(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        # torch's int8 kernel reads 16 input features at a time and crashes on other widths
        self.kernel_ok = in_features % 16 == 0
        self.native_ok = in_features % native.BLOCK == 0

    def _can_tile(self) -> bool:
        return self.native_ok and super()._can_tile()

    def _rearrange(self, tensors: tuple, to_tiles: bool) -> None:
        native.int8_tiles(*tensors, to_tiles)

    def igemm_min_rows(self) -> int:
        vnni_tiles = (self.tiled() or self._can_tile()) and native.kernel_isa() != "AVX2"
        return IGEMM_MIN_ROWS if vnni_tiles else FOUR_ROW_INT8_IGEMM_MIN_ROWS

    def _decode_kernel(self, tiled: bool) -> tuple:
        fn = native.library().minicpmv_linear_int8_tiles if tiled else native.library().minicpmv_linear_int8
        return fn, (self.qweight.contiguous(), self.scales.float().contiguous()), (self.out_features, self.in_features)

    def _igemm_weight(self) -> tuple:
        packed, colsum = native.pack_int8(self.qweight.contiguous(), tiles=self.tiled())
        return packed, colsum, self.scales.float().contiguous()

    def _widened_weight(self) -> torch.Tensor:
        return native.dequantize_int8(self.qweight, self.scales.float().contiguous())

    def _torch_product(self, x: torch.Tensor) -> torch.Tensor:
        if _fused(x, self.kernel_ok):
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)  # the kernel is fast in bf16
            out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales.to(torch.bfloat16))
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, dequantize_int8(self.qweight, self.scales, x.dtype))


class Int4Linear(QuantizedLinear):
    """int4 weights, groups of `group_size` columns with float16 scales and zeros."""

    tile_names = streamed_names = ("qweight", "scales", "zeros")
    _caches = NativeLinear._caches + ("_packed",)

    # float16 scales and zeros, as stored: what the kernels read (llama.cpp stores its too), and a
    # float32 copy would add 0.5 bit per weight of memory (0.8 GB on 2.6) for no change in value
    stored_dtypes = {"scales": torch.float16, "zeros": torch.float16}

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int):
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.zeros((out_features, in_features // 2), dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros((out_features, groups), dtype=torch.float16))
        self.register_buffer("zeros", torch.zeros((out_features, groups), dtype=torch.float16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._packed = None  # torch kernel's own layout, built on first use (it depends on the CPU)
        self.kernel_ok = out_features % 16 == 0  # torch's int4 packing needs it

    def _drop_caches(self) -> None:
        super()._drop_caches()
        self._packed = None

    def _can_tile(self) -> bool:
        return super()._can_tile() and self.scales.dtype == self.zeros.dtype == torch.float16

    def _rearrange(self, tensors: tuple, to_tiles: bool) -> None:
        native.int4_tiles(*tensors, self.group_size, to_tiles)

    def _native_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float16 scales and zeros: the buffers themselves, unless someone stored other dtypes."""
        return tuple(t.to(torch.float16).contiguous() for t in (self.scales, self.zeros))

    def _decode_kernel(self, tiled: bool) -> tuple:
        if tiled:
            fn, tensors = native.library().minicpmv_linear_int4_tiles, self._tile_buffers()
        else:
            fn, tensors = native.library().minicpmv_linear_int4, (self.qweight.contiguous(), *self._native_scales())
        return fn, tensors, (self.out_features, self.in_features, self.group_size)

    def _igemm_weight(self) -> tuple:
        levels = 63 if self._igemm_narrow() == native.NARROW_WEIGHTS else 127
        if self.tiled():
            return native.pack_int4_as_int8(*self._tile_buffers(), self.group_size, tiles=True, levels=levels)
        return native.pack_int4_as_int8(
            self.qweight.contiguous(), *self._native_scales(), self.group_size, levels=levels
        )

    def _igemm_narrow(self) -> int:
        # Without VNNI, 7-bit integers spare the product a sign step (prefill 1.4x). The int4
        # weight is requantized per channel anyway: 63 levels add ~2% to the int4 rounding's error
        # (against 127), while an int8 checkpoint's own weights keep their 8 bits.
        return native.NARROW_WEIGHTS if native.igemm_narrows() else native.WIDE

    def _widened_weight(self) -> torch.Tensor:
        return native.dequantize_int4(self.qweight.contiguous(), *self._native_scales(), self.group_size)

    def _kernel_weights(self):
        if self._packed is None:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(self.qweight), 1)
            scales_zeros = torch.stack([self.scales.t(), self.zeros.t()], dim=-1)  # (G, N, 2)
            self._packed = (packed, scales_zeros.to(torch.bfloat16).contiguous())
        return self._packed

    def _torch_product(self, x: torch.Tensor) -> torch.Tensor:
        if _fused(x, self.kernel_ok):
            packed, scales_zeros = self._kernel_weights()
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, self.group_size, scales_zeros)
            return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, dequantize_int4(self.qweight, self.scales, self.zeros, x.dtype))


class Bf16Linear(NativeLinear):
    """bfloat16 weights with float32 arithmetic: for a bfloat16 checkpoint (the official ones) the
    float32 model's results, at half the memory and half the bytes read per decoded token."""

    stored_dtypes = {"weight": torch.bfloat16}  # kept as stored when the model loads in float32
    streamed_names = ("weight",)
    NATIVE_MAX_ROWS = 16  # beyond this, float32 GEMM on the widened weight is faster (prefill)

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros((out_features, in_features), dtype=torch.bfloat16))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.native_ok = in_features % 8 == 0

    def _bind(self) -> DecodeCall:
        return DecodeCall(
            self,
            native.library().minicpmv_linear_bf16,
            (self.weight.contiguous(),),
            (self.out_features, self.in_features),
            self.NATIVE_MAX_ROWS + 1,
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows <= self.NATIVE_MAX_ROWS and x.dtype == torch.float32 and _native(x, self.native_ok):
            return self._native_product(x)
        out = F.linear(x, self.weight.to(x.dtype))
        return out if self.bias is None else out + self.bias.to(out.dtype)
