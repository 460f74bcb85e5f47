"""The allocator setting that load() applies on CPU (minicpmv.memory.reuse_freed_memory): freed
tensors up to 32 MB are reused from glibc's heap instead of being mapped afresh, so a repeated
activation stops costing a page fault per 4 KB page; `MINICPMV_MALLOC=system` opts out."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from minicpmv.quant import native

# ten passes through a vision-sized int8 MLP (1024 patches, 1152 -> 4304 -> 1152), as a crop makes
COUNT_FAULTS = """
import resource, torch
from minicpmv.memory import reuse_freed_memory
from minicpmv.quant.dynamic import use_dynamic_int8
applied = reuse_freed_memory()
torch.manual_seed(0)
mlp = torch.nn.Sequential(
    torch.nn.LayerNorm(1152), torch.nn.Linear(1152, 4304), torch.nn.GELU("tanh"), torch.nn.Linear(4304, 1152)
)
use_dynamic_int8(mlp)
x = torch.randn(1024, 1152)
with torch.inference_mode():
    mlp(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        x = x + mlp(x)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(malloc: str) -> tuple[str, int]:
    env = dict(os.environ, MINICPMV_MALLOC=malloc)
    out = subprocess.run([sys.executable, "-c", COUNT_FAULTS], capture_output=True, text=True, env=env, check=True)
    applied, count = out.stdout.split()
    return applied, int(count)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
@pytest.mark.skipif(native.library() is None, reason="the int8 kernels' buffers make the pattern")
def test_freed_activations_are_reused_without_page_faults():
    applied, tuned = faults("tuned")
    skipped, system = faults("system")
    assert applied == "True" and skipped == "False"
    assert system > 1000  # fresh mappings, faulted in page by page on every pass (4278 measured)
    assert tuned < system / 10  # reused from the heap (7 measured)
