"""The native kernels (kernels/*.c: int8-activation products, decoding tiles, the int8 x int8
GEMM, the decode step): built on this machine, loaded with ctypes.

Compiled once per source, compiler and CPU with `-march=native` (the paper's "compile on the
target device") into the cache folder, then reused. OpenMP in the library resolves to the
libgomp torch already loaded (same soname), so it shares torch's threads and follows
`torch.set_num_threads` instead of starting a second pool that would fight it for the cores.

`MINICPMV_QUANT_KERNEL=torch` or `=reference` turns the native path off; anything that stops
the build (no compiler, no AVX2, not x86) does too, with one warning, and torch's path is used.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
import warnings
from importlib import resources
from pathlib import Path

import torch

from ..cpu import cpu_flags, is_x86_64
from ..files import staged_path
from ..tuning import cache_path

# decoding / weight-only products; int8 x int8 for many rows; int4 decoding tiles; the decode step
SOURCES = ("qgemm.c", "igemm.c", "attention.c", "tiles.c", "decoder.c", "hybrid.c")
HEADERS = ("qgemm.h", "vecmath.h", "layers.h", "igemm.h")
BLOCK = 32
TILE_ROWS = 16  # output rows per decoding tile of an int4 weight (kernels/tiles.c)
_LOCK = threading.Lock()
_STATE: dict = {}


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(sources: list[Path], compiler: str, headers: tuple[Path, ...] = ()) -> Path:
    # MINICPMV_KERNEL_MARCH builds for another instruction set (the tests build the AVX2-only path):
    # a -march name, then any further compiler flags ("haswell -mavx512vl -mavx512vnni": AVX-VNNI's
    # kernels on an AVX-512 CPU)
    march, *extra = (os.environ.get("MINICPMV_KERNEL_MARCH") or "native").split()
    flags = ["-O3", f"-march={march}", *extra, "-fopenmp", "-shared", "-fPIC", "-std=c11"]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    cpu = " ".join(sorted(cpu_flags()))
    texts = [source.read_text() for source in (*sources, *headers)]  # a header change rebuilds too
    key = hashlib.sha256("\n".join([*texts, version, cpu, " ".join(flags)]).encode()).hexdigest()[:16]
    target = cache_path().parent / "kernels" / f"qgemm-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # staged: a concurrent process sees no library or a whole one
    with staged_path(target, suffix=".so") as tmp:
        command = [compiler, *flags, *map(str, sources), "-o", str(tmp), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "compiler failed")
    return target


def avx_vnni_march() -> str | None:
    """A MINICPMV_KERNEL_MARCH that builds AVX-VNNI's 256-bit kernels (Intel since Alder Lake) on
    this CPU: natively where it has AVX-VNNI, in AVX-512 VL's encoding of the same instruction
    where it has AVX-512 VNNI (tests and emulating benchmarks); None elsewhere."""
    flags = cpu_flags()
    if "avx_vnni" in flags:
        return "haswell -mavxvnni"
    if {"avx512_vnni", "avx512vl"} <= flags:
        return "haswell -mavx512vl -mavx512vnni -mprefer-vector-width=256"
    return None


def _declare(lib) -> None:
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib.minicpmv_linear_int4.argtypes = [p, i64, p, p, p, i64, i64, i64, p]
    lib.minicpmv_linear_int8.argtypes = [p, i64, p, p, i64, i64, p]
    lib.minicpmv_linear_bf16.argtypes = [p, i64, p, i64, i64, p]
    lib.minicpmv_linear_int4_tiles.argtypes = [p, i64, p, p, p, i64, i64, i64, p]
    lib.minicpmv_int4_tiles.argtypes = [p, p, p, i64, i64, i64, ctypes.c_int]
    lib.minicpmv_int4_tiles.restype = None
    lib.minicpmv_int8_tiles.argtypes = [p, i64, i64, ctypes.c_int]
    lib.minicpmv_int8_tiles.restype = None
    lib.minicpmv_linear_int8_tiles.argtypes = [p, i64, p, p, i64, i64, p]
    lib.minicpmv_linear_int8_tiles.restype = ctypes.c_int
    lib.minicpmv_pack_int8_tiles.argtypes = [p, i64, i64, p, p]
    lib.minicpmv_pack_int8_tiles.restype = None
    for step in (lib.minicpmv_decode_layers, lib.minicpmv_decode_hybrid):
        step.argtypes = [p, i64, p, p, p, p, i64]
        step.restype = ctypes.c_int
    lib.minicpmv_widen_int4.argtypes = [p, p, p, i64, i64, i64, p]
    lib.minicpmv_widen_int8.argtypes = [p, p, i64, i64, p]
    lib.minicpmv_pack_int8.argtypes = [p, i64, i64, p, p]
    lib.minicpmv_pack_int8.restype = None
    lib.minicpmv_pack_int4_as_int8.argtypes = [p, p, p, i64, i64, i64, ctypes.c_int, p, p, p]
    lib.minicpmv_pack_int4_as_int8.restype = None
    lib.minicpmv_pack_int4_tiles_as_int8.argtypes = [p, p, p, i64, i64, i64, ctypes.c_int, p, p, p]
    lib.minicpmv_pack_int4_tiles_as_int8.restype = None
    lib.minicpmv_igemm.argtypes = [p, i64, i64, p, p, p, p, i64, ctypes.c_int, p, ctypes.c_int, p]
    lib.minicpmv_igemm.restype = ctypes.c_int
    lib.minicpmv_attend_int8.argtypes = [p, p, p, i64, i64, i64, i64, p, ctypes.c_float, ctypes.c_int, p]
    lib.minicpmv_attend_int8.restype = ctypes.c_int
    lib.minicpmv_int4_experts.argtypes = [p, i64, p, i64, p, p, p, p]
    lib.minicpmv_int4_experts.restype = ctypes.c_int
    lib.minicpmv_kernel_isa.argtypes = []
    lib.minicpmv_kernel_isa.restype = ctypes.c_char_p
    for fn in (
        lib.minicpmv_linear_int4,
        lib.minicpmv_linear_int4_tiles,
        lib.minicpmv_linear_int8,
        lib.minicpmv_linear_bf16,
    ):
        fn.restype = ctypes.c_int
    lib.minicpmv_widen_int4.restype = lib.minicpmv_widen_int8.restype = None


def library():
    """The loaded kernel library, or None where it cannot be built (reason in `why_unavailable`)."""
    if "lib" in _STATE:  # every quantized linear asks, once per call: no lock once settled
        return _STATE["lib"]
    with _LOCK:
        if "lib" not in _STATE:
            _STATE["lib"], _STATE["why"] = _load()
        return _STATE["lib"]


def why_unavailable() -> str | None:
    library()
    return _STATE["why"]


def _load():
    if os.environ.get("MINICPMV_QUANT_KERNEL", "auto") != "auto":
        return None, "MINICPMV_QUANT_KERNEL is set"
    if not is_x86_64() or "avx2" not in cpu_flags():
        return None, "the native kernels need an x86-64 CPU with AVX2"
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler (cc/gcc) on PATH"
    try:
        with resources.as_file(resources.files(__package__) / "kernels") as folder:
            path = _build(
                [Path(folder) / name for name in SOURCES], compiler, tuple(Path(folder) / name for name in HEADERS)
            )
        lib = ctypes.CDLL(str(path))
        _declare(lib)
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"native int8 kernels unavailable, using torch's: {err}", RuntimeWarning, stacklevel=3)
        return None, str(err)
    return lib, None


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def checked(status: int) -> None:
    """The entry points return -1 when they cannot allocate the quantized activations."""
    if status:
        raise MemoryError("native kernel: no memory for the quantized activations")


def gemm_int4(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    tiles: bool = False,
) -> torch.Tensor:
    """x (M, K) float32 @ int4 weight^T -> (M, N) float32; scales and zeros (N, K/g) float16;
    `tiles`: the weight is in int4_tiles' layout."""
    rows, width = x.shape
    out = torch.empty((rows, qweight.shape[0]))
    product = library().minicpmv_linear_int4_tiles if tiles else library().minicpmv_linear_int4
    checked(
        product(_ptr(x), rows, _ptr(qweight), _ptr(scales), _ptr(zeros), qweight.shape[0], width, group_size, _ptr(out))
    )
    return out


def int4_tiles(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, to_tiles: bool
) -> None:
    """Rearrange an int4 weight (N, K/2) and its float16 scales and zeros (N, K/g) in place into
    the decoding tiles of kernels/tiles.c (`to_tiles`) or back into the stored layout.
    N % TILE_ROWS == 0; every tensor contiguous on the CPU."""
    rows, width = qweight.shape[0], qweight.shape[1] * 2
    library().minicpmv_int4_tiles(_ptr(qweight), _ptr(scales), _ptr(zeros), rows, width, group_size, int(to_tiles))


def int8_tiles(qweight: torch.Tensor, to_tiles: bool) -> None:
    """Rearrange an int8 weight (N, K) in place into the decoding tiles of kernels/tiles.c
    (`to_tiles`) or back. N % TILE_ROWS == 0, contiguous on the CPU."""
    library().minicpmv_int8_tiles(_ptr(qweight), qweight.shape[0], qweight.shape[1], int(to_tiles))


def gemm_int8(x: torch.Tensor, qweight: torch.Tensor, wscales: torch.Tensor, tiles: bool = False) -> torch.Tensor:
    """x (M, K) float32 @ int8 weight^T -> (M, N) float32, `wscales` (N,) float32; `tiles`: the
    weight is in int8_tiles' layout."""
    rows, width = x.shape
    out = torch.empty((rows, qweight.shape[0]))
    product = library().minicpmv_linear_int8_tiles if tiles else library().minicpmv_linear_int8
    checked(product(_ptr(x), rows, _ptr(qweight), _ptr(wscales), qweight.shape[0], width, _ptr(out)))
    return out


def gemm_bf16(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, K) float32 @ bfloat16 weight (N, K)^T -> (M, N) float32, accumulated in float32."""
    rows, width = x.shape
    out = torch.empty((rows, weight.shape[0]))
    checked(library().minicpmv_linear_bf16(_ptr(x), rows, _ptr(weight), weight.shape[0], width, _ptr(out)))
    return out


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """(N, K/2) packed int4 with float16 scales and zeros (N, K/g) -> (N, K) bfloat16."""
    rows, width = qweight.shape[0], qweight.shape[1] * 2
    out = torch.empty((rows, width), dtype=torch.bfloat16)
    library().minicpmv_widen_int4(_ptr(qweight), _ptr(scales), _ptr(zeros), rows, width, group_size, _ptr(out))
    return out


def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 with float32 scales (N,) -> (N, K) bfloat16."""
    out = torch.empty(qweight.shape, dtype=torch.bfloat16)
    library().minicpmv_widen_int8(_ptr(qweight), _ptr(scales), qweight.shape[0], qweight.shape[1], _ptr(out))
    return out


def pack_int8(qweight: torch.Tensor, tiles: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) int8 weight -> (panels of 16 channels x 4 k, the offset correction per channel)
    for `igemm` (kernels/igemm.c); `tiles`: the weight is in int8_tiles' layout."""
    rows, width = qweight.shape
    packed = torch.empty(((rows + 15) // 16) * ((width + 3) // 4 * 4) * 16, dtype=torch.int8)
    colsum = torch.empty(rows, dtype=torch.int32)
    pack = library().minicpmv_pack_int8_tiles if tiles else library().minicpmv_pack_int8
    pack(_ptr(qweight), rows, width, _ptr(packed), _ptr(colsum))
    return packed, colsum


def pack_int4_as_int8(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    tiles: bool = False,
    levels: int = 127,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K/2) packed int4 with float16 scales and zeros (N, K/g) -> (packed, colsum, per-channel
    float32 scales) for `igemm`: the weight requantized per channel to integers in [-levels,
    levels] (kernels/igemm.c; 63 for `igemm(..., narrow=NARROW_WEIGHTS)`); `tiles`: the weight is
    in int4_tiles' layout."""
    rows, width = qweight.shape[0], qweight.shape[1] * 2
    packed = torch.empty(((rows + 15) // 16) * width * 16, dtype=torch.int8)
    colsum = torch.empty(rows, dtype=torch.int32)
    wscales = torch.empty(rows)
    pack = library().minicpmv_pack_int4_tiles_as_int8 if tiles else library().minicpmv_pack_int4_as_int8
    pack(
        _ptr(qweight),
        _ptr(scales),
        _ptr(zeros),
        rows,
        width,
        group_size,
        levels,
        _ptr(packed),
        _ptr(colsum),
        _ptr(wscales),
    )
    return packed, colsum, wscales


def kernel_isa() -> str:
    """The instruction set the built kernels' integer products use: "AVX-512 VNNI", "AVX-VNNI" or "AVX2"."""
    return library().minicpmv_kernel_isa().decode()


# igemm's `narrow` (kernels/igemm.h): what the packed weights allow
WIDE, NARROW_BOTH, NARROW_WEIGHTS = 0, 1, 2


def igemm_narrows() -> bool:
    """Whether weights quantized to 7 bits make `igemm` faster here (a build without VNNI): with
    `narrow=NARROW_BOTH` it then takes 7-bit activations (1.8x), with NARROW_WEIGHTS it keeps 8
    bits and drops a sign step (1.4x)."""
    return kernel_isa() == "AVX2"


def igemm(
    x: torch.Tensor,
    packed: torch.Tensor,
    wscales: torch.Tensor,
    colsum: torch.Tensor,
    bias: torch.Tensor | None,
    gelu: bool = False,
    narrow: int = WIDE,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """x (M, K) float32, quantized per row to int8, @ packed int8 weight^T (per-channel float32
    `wscales`) + bias -> (M, N) float32; `gelu`: the tanh GELU applied to it in the same pass;
    `narrow`: NARROW_BOTH, the weights are within [-63, 63], and the activations may take 7 bits
    from each row's range where that is faster (CPUs without VNNI: `igemm_narrows`);
    NARROW_WEIGHTS, the same weights with 8-bit activations. `gate` (M, N) contiguous float32: the
    result is silu(gate) * (the product), written into `gate` (SwiGLU: no tensor of its own)."""
    rows, width = x.shape
    if gate is not None and (
        gate.shape != (rows, wscales.shape[0]) or gate.dtype != torch.float32 or not gate.is_contiguous()
    ):
        raise ValueError(f"igemm: gate must be contiguous float32 of shape {(rows, wscales.shape[0])}")
    out = torch.empty((rows, wscales.shape[0])) if gate is None else gate
    bias_ptr = None if bias is None else _ptr(bias)
    checked(
        library().minicpmv_igemm(
            _ptr(x),
            rows,
            width,
            _ptr(packed),
            _ptr(wscales),
            _ptr(colsum),
            bias_ptr,
            wscales.shape[0],
            int(gelu),
            None if gate is None else _ptr(gate),
            int(narrow),
            _ptr(out),
        )
    )
    return out


def attend_int8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, keys: torch.Tensor) -> torch.Tensor:
    """Softmax attention of (B, L, heads * hd) float32 q/k/v with Q K^T and P V as int8 products
    (kernels/attention.c; K and V 7-bit where `igemm_narrows`); keys (B,) int64: each crop's real
    keys, a prefix of its L (the rest are padding and get no weight) -> (B, L, heads * hd)."""
    batch, length, width = q.shape
    out = torch.empty_like(q)
    checked(
        library().minicpmv_attend_int8(
            _ptr(q),
            _ptr(k),
            _ptr(v),
            batch,
            length,
            heads,
            width // heads,
            _ptr(keys),
            (width // heads) ** -0.5,
            1,
            _ptr(out),
        )
    )
    return out
