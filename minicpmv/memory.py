"""Process memory figures for the timing lines and benchmarks."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB.

    Linux's VmHWM belongs to the current address space; ru_maxrss (the fallback elsewhere) would
    carry a parent's peak across exec.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    scale = 1 / 2**20 if __import__("sys").platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# glibc's mallopt parameters and its largest mmap threshold (HEAP_MAX / 2 on 64-bit)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX = -1, -3, 32 << 20


def reuse_freed_memory() -> bool:
    """Let glibc serve tensors up to 32 MB from its heap and keep what is freed for reuse.

    By default each tensor above ~128 KB is a fresh mmap, returned to the system when freed, so
    every such activation (a crop's 1024 x 4304 float32 MLP output is 17.6 MB) pays a page fault
    per 4 KB page the first time it is written (measured: research/v46-speed.md). Peak
    memory is unchanged; the resident size stays near the peak instead of falling back between
    calls. Process-wide, so set once at load; `MINICPMV_MALLOC=system` leaves malloc alone.
    Returns whether it applied (glibc only)."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("MINICPMV_MALLOC", "tuned") == "system":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 (glibc only: musl and macOS have other parameters)
    except (OSError, TypeError, AttributeError):
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
