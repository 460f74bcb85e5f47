"""What this CPU can do natively: the choices of fast paths depend on it (int8 dot products for
the quantized kernels, bfloat16 arithmetic for the vision encoder)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def is_x86_64() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def has_native_bf16() -> bool:
    """bfloat16 matrix products in hardware (AVX512-BF16 or AMX): there oneDNN's bf16 GEMM runs
    several times faster than float32; elsewhere it is emulated and slower."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
