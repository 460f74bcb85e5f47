"""`--isa`: run a benchmark on this CPU as on another where software decides (shared by peers.py
and time_to_answer.py). ATen, oneDNN and MKL are capped at AVX2, our kernels are built for that
instruction set, and bfloat16 is taken as not native, so that `load()` chooses as it would there
(`--vision-dtype auto`: int8 vision). Cores, caches and memory stay this machine's: the figures
are indicative, not a measurement on such a CPU."""

from __future__ import annotations

import getpass
import os
import tempfile

from minicpmv.quant.native import avx_vnni_march

EMULATED = {
    "avx2": dict(
        ATEN_CPU_CAPABILITY="avx2",
        ONEDNN_MAX_CPU_ISA="AVX2",
        MKL_ENABLE_INSTRUCTIONS="AVX2",
        MINICPMV_KERNEL_MARCH="haswell",
    ),
    "avx-vnni": dict(
        ATEN_CPU_CAPABILITY="avx2",
        ONEDNN_MAX_CPU_ISA="AVX2_VNNI",
        MKL_ENABLE_INSTRUCTIONS="AVX2",
        MINICPMV_KERNEL_MARCH=avx_vnni_march() or "native",
    ),
}

HELP = (
    "avx2: run as on a CPU with AVX2 only (ATen, oneDNN and MKL capped at AVX2, our kernels built for "
    "haswell, no native bf16); avx-vnni: the same with AVX-VNNI's 256-bit vpdpbusd (Intel since Alder "
    "Lake), in AVX-512 VL's encoding on an AVX-512 VNNI CPU. Emulations on this CPU's cores, caches and "
    "memory. llama.cpp is whatever llama-cpp-python imports: put one built with AVX2 only first on "
    "PYTHONPATH (docs/benchmarks.md has the build line)"
)


def emulate(isa: str) -> None:
    """Before torch first calls oneDNN / MKL and before our kernels build (they read the
    environment then); the CPU's bf16 flags hidden, so every `has_native_bf16()` answers False."""
    if isa not in EMULATED:
        return
    os.environ.update(EMULATED[isa])
    # torch.compile's cache keys do not hold ATEN_CPU_CAPABILITY: sharing one cache, an emulated
    # run reused this CPU's kernels and answered garbage, and a native run after an emulated one
    # crashed (malloc: corrupted top size); each instruction set gets its own
    os.environ.setdefault(
        "TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor-{isa}-{getpass.getuser()}")
    )
    import minicpmv.cpu

    flags = minicpmv.cpu.cpu_flags() - {"avx512_bf16", "amx_bf16"}
    minicpmv.cpu.cpu_flags = lambda: flags
