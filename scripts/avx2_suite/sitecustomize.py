"""`make test-avx2`: the suite as on a CPU with AVX2 only, on a CPU with more. Python imports this
file at start-up from PYTHONPATH, in the test process and in every subprocess it spawns: ATen,
oneDNN and MKL are capped at AVX2 (benchmarks/isa.py's avx2 emulation), our kernels are built for
haswell, and the CPU's AVX-512, AMX and AVX-VNNI flags are hidden from minicpmv.cpu, so every choice
that reads them (int8 tiles, bf16 vision, the narrow int4 prefill) goes as there. torch.compile
gets a cache of its own: its keys do not hold the instruction set, and kernels compiled for this
CPU answered garbage under the cap (research/decode-kernels.md)."""

import getpass
import os
import tempfile

os.environ.update(
    ATEN_CPU_CAPABILITY="avx2",
    ONEDNN_MAX_CPU_ISA="AVX2",
    MKL_ENABLE_INSTRUCTIONS="AVX2",
    MINICPMV_KERNEL_MARCH="haswell",
)
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor-avx2-{getpass.getuser()}")
)

try:
    import minicpmv.cpu as _cpu
except ImportError:  # a process without the package (pip, a tool): nothing to hide
    pass
else:
    _flags = frozenset(f for f in _cpu.cpu_flags() if not f.startswith(("avx512", "amx")) and f != "avx_vnni")
    _cpu.cpu_flags = lambda: _flags
