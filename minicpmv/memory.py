"""Process memory: figures for the timing lines and benchmarks, glibc's reuse of freed memory,
and huge pages for the weights a decoded token streams."""

from __future__ import annotations

import functools
import math
import mmap
import os
import resource
import weakref
from pathlib import Path

import torch


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


HUGE_PAGE = 2 << 20  # x86-64 and arm64 transparent huge pages
# `MINICPMV_HUGE_PAGES=0`: every tensor in ordinary pages (also toggled by A/B benchmarks)
HUGE_PAGES = {"on": os.environ.get("MINICPMV_HUGE_PAGES", "1") != "0"}
_HUGE_REGIONS: dict[int, object] = {}  # start address -> weak reference to its mapping


@functools.cache
def _system_has_huge_pages() -> bool:
    """Linux with transparent huge pages not set to `never` (read once)."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def huge_pages_possible() -> bool:
    """Whether Linux may back an madvise'd mapping with 2 MB pages here (and they are wanted)."""
    return HUGE_PAGES["on"] and _system_has_huge_pages()


def _worth_huge_pages(nbytes: int) -> bool:
    return nbytes >= HUGE_PAGE and huge_pages_possible()


def huge_page_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose whole 2 MB spans the kernel may back with huge pages.

    A decoded token streams every weight once; in 4 KB pages that is a TLB miss every 4 KB and the
    hardware prefetchers stop at each page's end (research/decode-kernels.md has the measured gain).
    The leading slack of the mapping that aligns the tensor is never touched, so it costs address
    space, not memory; the tail past the last whole huge page stays in ordinary pages. Tensors
    under one huge page, or where the system has none, are a plain torch.empty."""
    nbytes = math.prod(shape) * dtype.itemsize
    if not _worth_huge_pages(nbytes):
        return torch.empty(shape, dtype=dtype)
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    offset = -torch.frombuffer(region, dtype=torch.uint8, count=1).data_ptr() % HUGE_PAGE
    region.madvise(mmap.MADV_HUGEPAGE, offset, nbytes // HUGE_PAGE * HUGE_PAGE)
    # a storage of exactly the tensor (torch.save writes no slack); it keeps the mapping alive
    tensor = torch.frombuffer(region, dtype=dtype, count=math.prod(shape), offset=offset)
    start = tensor.data_ptr()
    _HUGE_REGIONS[start] = weakref.ref(region, lambda _, start=start: _HUGE_REGIONS.pop(start, None))
    return tensor.view(shape)


def in_huge_pages(tensor: torch.Tensor) -> bool:
    """Whether the tensor lives in a mapping made by huge_page_empty."""
    ref = _HUGE_REGIONS.get(tensor.untyped_storage().data_ptr())
    return ref is not None and ref() is not None


def to_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor itself where it is in huge pages already or could not be; else a copy there."""
    movable = tensor.device.type == "cpu" and tensor.is_contiguous() and not in_huge_pages(tensor)
    if not (movable and _worth_huge_pages(tensor.numel() * tensor.element_size())):
        return tensor
    return huge_page_empty(tuple(tensor.shape), tensor.dtype).copy_(tensor)
