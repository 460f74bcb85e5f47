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


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as lines:
            return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def has_native_bf16() -> bool:
    """bfloat16 matrix products in hardware (AVX512-BF16 or AMX): there oneDNN's bf16 GEMM runs
    several times faster than float32; elsewhere it is emulated and slower."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def idle_threads(cores: int | None = None) -> int:
    """CPU threads to compute with when none is asked for: the cores the 1-minute load average
    leaves free, at least one. On a busy machine OpenMP's spinning threads fight the other work
    for the busy cores: with one other busy process on 2 cores, the demo model decoded at 152
    tok/s with 2 threads and 469 with 1 (benchmarks/busy_threads.py, docs/benchmarks.md)."""
    import os

    cores = cores or os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average on this platform
        return cores
    return max(1, min(cores, round(cores - busy)))
