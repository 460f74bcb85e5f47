"""Decoding tiles (kernels/tiles.c): int4 and int8 weights rearranged in place at a layer's first
native call, back and forth losslessly, computing what the stored layout does; the rows from
which a prompt takes the int8 GEMM instead; a tiled layer saved, loaded, cast, copied and
pickled in the stored layout."""

import pytest
import torch
from quant_layers import filled, with_kernel

from minicpmv.quant import native
from minicpmv.quant.linear import Int4Linear, Int8Linear
from minicpmv.quant.schemes import quantize_int4, quantize_int8

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"native kernels: {native.why_unavailable()}")


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_tiles_rearrange_losslessly_and_compute_what_the_stored_layout_does(group_size):
    """Decoding tiles (kernels/tiles.c) are the same weights in another order: back and forth
    gives the stored bytes, the product is the stored kernel's (summed in another order), and the
    prefill repack from tiles (vpshufb on per-row tables) is byte for byte the repack from the
    stored layout (a byte loop), at 127 and 63 levels."""
    torch.manual_seed(0)
    out_features, in_features = 48, 256
    packed, scales, zeros = quantize_int4(torch.randn(out_features, in_features), group_size)
    scales, zeros = scales.half(), zeros.half()
    tiles = [t.clone() for t in (packed, scales, zeros)]
    native.int4_tiles(*tiles, group_size, True)
    assert not torch.equal(tiles[0], packed)
    for rows in (1, 5, 8, 23):  # AVX-512 passes of up to 8 rows: 23 = 8 + 8 + 7
        x = torch.randn(rows, in_features)
        stored = native.gemm_int4(x, packed, scales, zeros, group_size)
        torch.testing.assert_close(native.gemm_int4(x, *tiles, group_size, tiles=True), stored, atol=1e-4, rtol=1e-5)
    for levels in (127, 63):  # 63: an int4 prefill's 7-bit weights without VNNI
        for ours, theirs in zip(
            native.pack_int4_as_int8(*tiles, group_size, tiles=True, levels=levels),
            native.pack_int4_as_int8(packed, scales, zeros, group_size, levels=levels),
        ):
            assert torch.equal(ours, theirs)
    native.int4_tiles(*tiles, group_size, False)
    assert all(torch.equal(a, b) for a, b in zip(tiles, (packed, scales, zeros)))


@pytest.mark.parametrize(
    "make",
    [lambda: Int8Linear(128, 32, False), lambda: Int8Linear(128, 24, False), lambda: Int4Linear(128, 32, False, 32)],
)
def test_a_prefill_takes_the_int8_gemm_from_its_layouts_crossover(make, monkeypatch):
    """The rows from which a layer repacks its weight per call for the int8 x int8 GEMM: 64 where
    it decodes from tiles with vpdpbusd or int4 ones (the tiles stay ahead up to 63 rows), 32 for
    an int8 weight whose kernel takes 4 rows a pass without it: AVX2 tiles (vpmaddubsw), or the
    stored layout of a layer that cannot tile (out_features not a multiple of 16)."""
    module = filled(make(), torch.randn(make().out_features, 128) / 128**0.5)
    rows_seen, gemm = [], native.igemm
    monkeypatch.setattr(native, "igemm", lambda x, *args, **kw: rows_seen.append(x.shape[0]) or gemm(x, *args, **kw))
    for rows in (1, 31, 32, 63, 64):
        module(torch.randn(rows, 128))
    assert module.tiled() == (module.out_features % 16 == 0)
    four_rows = isinstance(module, Int8Linear) and (native.kernel_isa() == "AVX2" or not module.tiled())
    assert rows_seen == ([32, 63, 64] if four_rows else [64])


@pytest.mark.parametrize("make", [lambda: Int4Linear(128, 32, False, 32), lambda: Int8Linear(128, 32, False)])
def test_a_prompt_before_any_decoding_tiles_the_layer_and_repacks_from_the_tiles(make):
    """A layer's first native call may be a 64-row prompt (the int8 GEMM): it makes the decoding
    tiles then, as a decoded token would, since the GEMM's per-call repack from them is
    vectorized (5.5x the stored layout's byte loop); the answer is the one a layer that decoded
    first gives, byte for byte."""
    torch.manual_seed(0)
    weight, prompt = torch.randn(32, 128) / 128**0.5, torch.randn(64, 128)
    fresh, decoded = filled(make(), weight), filled(make(), weight)
    decoded(torch.randn(1, 128))
    assert decoded.tiled() and not fresh.tiled()
    out = fresh(prompt)
    assert fresh.tiled()
    assert torch.equal(out, decoded(prompt))


@pytest.mark.parametrize("width", [160, 192])
def test_int8_tiles_rearrange_losslessly_and_compute_what_the_stored_layout_does(width):
    """int8 tiles hold w + 128 in igemm's panel order: back and forth gives the stored bytes; the
    product (VNNI: the offset taken back per activation block; AVX2: w back signed) is the stored
    kernel's where both round the activations in the same blocks (160 wide: 32 in every build;
    192: the tiles take 64, which the stored kernel takes only in 512-bit builds, 32 in the
    256-bit ones, so there the two differ by the activations' rounding alone); the prefill repack
    from tiles is byte for byte the repack from the stored layout."""
    torch.manual_seed(0)
    qweight, scales = quantize_int8(torch.randn(48, width))
    tiles = qweight.clone()
    native.int8_tiles(tiles, True)
    assert not torch.equal(tiles, qweight)
    same_blocks = width % 64 or native.kernel_isa() == "AVX-512 VNNI"
    for rows in (1, 6):
        x = torch.randn(rows, width)
        stored, tiled = native.gemm_int8(x, qweight, scales), native.gemm_int8(x, tiles, scales, tiles=True)
        if same_blocks:
            torch.testing.assert_close(tiled, stored, atol=1e-4, rtol=1e-5)
        else:
            assert ((tiled - stored).norm() / stored.norm()).item() < 0.02
    for ours, theirs in zip(native.pack_int8(tiles, tiles=True), native.pack_int8(qweight)):
        assert torch.equal(ours, theirs)
    native.int8_tiles(tiles, False)
    assert torch.equal(tiles, qweight)


@pytest.mark.parametrize("make", [lambda: Int4Linear(128, 32, False, 32), lambda: Int8Linear(128, 32, False)])
def test_a_tiled_layer_saves_loads_and_casts_in_the_stored_layout(make):
    """A layer that decoded holds tiles in its buffers; its state dict is the stored layout and
    stays so while it goes on decoding; loading other weights into it and casting it work."""
    torch.manual_seed(0)
    module = filled(make(), torch.randn(32, 128) / 128**0.5)
    stored = {name: t.clone() for name, t in module.state_dict().items()}
    x = torch.randn(1, 128)
    expected = with_kernel("reference", lambda: module(x))
    torch.testing.assert_close(module(x), expected, atol=0.05, rtol=0.02)
    assert module.tiled() and not torch.equal(module.qweight, stored["qweight"])
    saved = module.state_dict()
    module(x)
    assert all(torch.equal(saved[name], stored[name]) for name in stored)
    other = filled(make(), torch.randn(32, 128) / 128**0.5)
    module.load_state_dict(other.state_dict())
    assert not module.tiled()
    torch.testing.assert_close(module(x), with_kernel("reference", lambda: other(x)), atol=0.05, rtol=0.02)
    assert module.tiled()
    module.to(torch.float64)  # casts the float buffers: the layer puts its weight back first
    assert not module.tiled() and module.qweight.dtype in (torch.uint8, torch.int8)
    module.to(torch.float32)
    torch.testing.assert_close(module(x), with_kernel("reference", lambda: other(x)), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("make", [lambda: Int4Linear(128, 32, False, 32), lambda: Int8Linear(128, 32, False)])
def test_a_layer_that_decoded_copies_and_pickles_in_the_stored_layout(make):
    """A bound call holds this process's pointers and the tile references name the layer's own
    tensors: deepcopy and pickle take the stored weights and no caches, and the copy computes
    what the original does while the original keeps its tiles."""
    import copy
    import pickle

    torch.manual_seed(0)
    module = filled(make(), torch.randn(32, 128) / 128**0.5)
    stored = module.state_dict()["qweight"].clone()
    x = torch.randn(1, 128)
    expected = module(x)
    for twin in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert not twin.tiled() and torch.equal(twin.qweight, stored)
        assert torch.equal(twin(x), expected)
    assert module.tiled()
    assert torch.equal(module(x), expected)
