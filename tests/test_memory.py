"""The allocator setting that load() applies on CPU (minicpmv.memory.reuse_freed_memory): tensors
up to 32 MB come from glibc's heap, where freed ones are reused, instead of each being a fresh
mapping that is faulted in page by page and returned when freed (one 4.6 crop through the int8
tower: 85k -> 4k page faults, docs/benchmarks.md); `MINICPMV_MALLOC=system` opts out."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# where a 16 MB activation lives: inside the [heap] mapping, or a mapping of its own
WHERE = """
import torch
from minicpmv.memory import reuse_freed_memory
applied = reuse_freed_memory()
tensor = torch.empty(4 << 20)
tensor.fill_(1.0)
address = tensor.data_ptr()
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start <= address < end:
            print(applied, "heap")
            break
else:
    print(applied, "own-mapping")
"""


def where(malloc: str) -> list[str]:
    env = dict(os.environ, MINICPMV_MALLOC=malloc)
    return subprocess.run(
        [sys.executable, "-c", WHERE], capture_output=True, text=True, env=env, check=True
    ).stdout.split()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc setting")
def test_activations_come_from_the_heap_where_freed_memory_is_reused():
    assert where("tuned") == ["True", "heap"]
    assert where("system") == ["False", "own-mapping"]  # glibc's default for a first large block
