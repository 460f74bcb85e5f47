"""Process memory settings (minicpmv.memory).

The allocator setting that load() applies on CPU (reuse_freed_memory): tensors up to 32 MB come
from glibc's heap, where freed ones are reused, instead of each being a fresh mapping that is
faulted in page by page and returned when freed (one 4.6 crop through the int8 tower: 85k -> 4k
page faults, docs/benchmarks.md); `MINICPMV_MALLOC=system` opts out.

Huge pages for what a decoded token streams (huge_page_empty, the native layers' placement): the
whole 2 MB spans of a weight are advised for huge pages, its tail and small tensors are not, the
values and results do not change, and the mapping goes with the tensor."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
from conftest import TINY

from minicpmv import memory
from minicpmv.memory import HUGE_PAGE, huge_page_empty, in_huge_pages, to_huge_pages
from minicpmv.model.checkpoint import OpenCheckpoint, load_model, save_model
from minicpmv.model.safetensors_reader import read_header, read_tensors, write_tensors
from minicpmv.quant import QuantConfig, native, quantize_model
from minicpmv.quant.apply import quantize_weight
from minicpmv.quant.linear import Int4Linear, Int8Linear
from minicpmv.quant.schemes import quantize_int4, quantize_int8

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


needs_huge_pages = pytest.mark.skipif(not memory.huge_pages_possible(), reason="no transparent huge pages here")


def mapping_of(address: int) -> tuple[int, int, set[str]]:
    """(start, end, VmFlags) of the mapping holding `address`, from /proc/self/smaps."""
    found = None
    for line in open("/proc/self/smaps"):
        first = line.split()[0]
        if "-" in first and ":" not in first:
            start, end = (int(x, 16) for x in first.split("-"))
            found = (start, end) if start <= address < end else None
        elif found and line.startswith("VmFlags:"):
            return (*found, set(line.split()[1:]))
    raise AssertionError(f"no mapping holds {address:#x}")


@needs_huge_pages
def test_whole_huge_page_spans_are_advised_and_the_tail_is_not():
    tensor = huge_page_empty(((5 << 20) // 4,), torch.float32)  # 2.5 huge pages
    start = tensor.data_ptr()
    assert in_huge_pages(tensor) and start % HUGE_PAGE == 0
    assert tensor.untyped_storage().nbytes() == 5 << 20  # torch.save would write no slack
    head = mapping_of(start)
    assert "hg" in head[2] and head[:2] == (start, start + 2 * HUGE_PAGE)
    assert "hg" not in mapping_of(start + 2 * HUGE_PAGE)[2]  # the last half page: ordinary pages
    tensor.fill_(1.5)
    assert tensor.sum().item() == 1.5 * tensor.numel()


@needs_huge_pages
def test_the_mapping_goes_with_the_tensor_and_small_tensors_stay_where_they_are():
    tensor = huge_page_empty((3 << 20,), torch.uint8)
    start = tensor.data_ptr()
    view = tensor[:10]
    del tensor
    assert in_huge_pages(view)  # a view keeps the mapping alive
    del view
    with pytest.raises(AssertionError, match="no mapping"):
        mapping_of(start)
    small = torch.ones(1000)
    assert to_huge_pages(small) is small and not in_huge_pages(huge_page_empty((1000,), torch.float32))
    plain = torch.arange(3 << 20, dtype=torch.int32)
    placed = to_huge_pages(plain)
    assert in_huge_pages(placed) and not in_huge_pages(plain) and torch.equal(placed, plain)
    assert to_huge_pages(placed) is placed


@needs_huge_pages
def test_streamed_weights_read_from_safetensors_land_in_huge_pages_and_others_do_not(tmp_path):
    """Only the named ones: on a VM a huge page's first touch can cost several times a 4 KB
    page's (research/decode-kernels.md), so nothing else pays it at load."""
    tensors = {name: torch.randint(-128, 127, (2048, 1536), dtype=torch.int8) for name in ("streamed", "other")}
    tensors["small"] = torch.randn(7)
    write_tensors(tmp_path / "w.safetensors", tensors)
    header, data_start = read_header(tmp_path / "w.safetensors")
    read = dict(
        read_tensors(tmp_path / "w.safetensors", list(tensors), header, data_start, frozenset({"streamed", "small"}))
    )
    assert in_huge_pages(read["streamed"]) and not in_huge_pages(read["other"]) and not in_huge_pages(read["small"])
    assert all(torch.equal(read[name], tensors[name]) for name in tensors)


@needs_huge_pages
def test_weights_quantized_to_decode_here_land_in_huge_pages_and_those_for_a_file_do_not():
    weight = torch.randn(4096, 1024)  # int4: a 2 MB qweight
    for bits in (4, 8, 16):
        here = quantize_weight(weight, bits, 64, streamed=True)
        written = quantize_weight(weight, bits, 64)
        stream = "qweight" if bits < 16 else "weight"
        assert in_huge_pages(here[stream]) and not in_huge_pages(written[stream])
        assert all(torch.equal(here[name], written[name]) for name in here)


def test_a_quantized_checkpoint_names_the_weights_its_decoding_streams(tmp_path):
    save_model(quantize_model(load_model(TINY["2.6"] / "checkpoint"), QuantConfig(bits=4, group_size=32)), tmp_path)
    streamed = OpenCheckpoint(tmp_path).streamed
    layer = "llm.model.layers.0.mlp.down_proj"
    assert {f"{layer}.qweight", f"{layer}.scales", f"{layer}.zeros"} <= streamed
    assert not any(name.startswith(("vpm.", "resampler.", "llm.model.embed_tokens")) for name in streamed)


@pytest.fixture
def huge_pages_off():
    memory.HUGE_PAGES["on"] = False
    yield
    memory.HUGE_PAGES["on"] = True


def quantized(layer):
    """A 2048 x 2048 layer with seeded weights in ordinary pages."""
    torch.manual_seed(0)
    weight = torch.randn(2048, 2048) / 2048**0.5
    if isinstance(layer, Int8Linear):
        layer.qweight, layer.scales = quantize_int8(weight)
    else:
        packed, scales, zeros = quantize_int4(weight, layer.group_size)
        layer.qweight, layer.scales, layer.zeros = packed, scales.half(), zeros.half()
    return layer


@needs_huge_pages
@pytest.mark.skipif(native.library() is None, reason="native kernels unavailable")
@pytest.mark.parametrize("make", [lambda: Int8Linear(2048, 2048, False), lambda: Int4Linear(2048, 2048, False, 64)])
def test_a_native_layer_moves_its_streamed_weights_at_binding_and_computes_the_same(make, huge_pages_off):
    x = torch.randn(1, 2048)
    plain = quantized(make())
    expected = plain(x)  # bound (and tiled) in ordinary pages
    assert not in_huge_pages(plain.qweight)
    memory.HUGE_PAGES["on"] = True
    placed = quantized(make())
    assert not in_huge_pages(placed.qweight)
    assert torch.equal(placed(x), expected)
    assert in_huge_pages(placed.qweight) and placed.tiled() == plain.tiled()
    # a new bias rebinds a layer that holds tiles already: it moves nothing twice, keeps its tiles
    plain.bias = torch.zeros(2048)
    assert torch.equal(plain(x), expected) and in_huge_pages(plain.qweight) and plain.tiled() == placed.tiled()
    assert torch.equal(plain.state_dict()["qweight"], quantized(make()).state_dict()["qweight"])
