"""`--vision-dtype int8`: the vision tower's linears as int8 x int8 products (kernels/igemm.c,
quant/dynamic.py). The kernel's integer sums are exact (AVX-512 VNNI and AVX2 builds), the layer
stays a float nn.Linear wherever the kernel does not apply, and a model's image features stay
within 2% of float32's."""

import pytest
import torch
import torch.nn.functional as F
from conftest import REFERENCE, TINY
from PIL import Image
from torch import nn

from minicpmv import load
from minicpmv.cpu import cpu_flags
from minicpmv.quant import native
from minicpmv.quant.dynamic import DynamicInt8Linear, use_dynamic_int8

needs_native = pytest.mark.skipif(native.library() is None, reason=f"native kernels: {native.why_unavailable()}")


def _exact(x, weight, bias, narrow=False, weight_levels=None):
    """What the kernel computes, in float64: per-channel int8 weights and per-row symmetric int8
    activations, or `narrow`: weights in 7 bits, activations in 7 over the row's range with 0 in
    it and an integer zero point; `weight_levels` 63: 7-bit weights with 8-bit activations."""
    w_scale = weight.abs().amax(1, keepdim=True) / (weight_levels or (63 if narrow else 127))
    wq = torch.round(weight / w_scale)
    if narrow:
        top, bottom = x.amax(1, keepdim=True).clamp_min(0), x.amin(1, keepdim=True).clamp_max(0)
        x_scale = (top - bottom) / 127
        inv = 1 / x_scale  # the kernel multiplies by the float32 inverse
        zero = torch.round(-bottom * inv)
        xq = (torch.round(x * inv) + zero).clamp(0, 127) - zero
    else:
        x_scale = x.abs().amax(1, keepdim=True) / 127
        xq = torch.round(x * (1 / x_scale))
    return (xq.double() @ wq.double().t()) * (x_scale.double() * w_scale.double().t()) + bias.double()


def _attention_exact(q, k, v, heads, keys, narrow):
    """What kernels/attention.c computes, in float64: per crop and head, K quantized per key and V
    per feature (7 bits with `narrow`, else 8), Q's rows as the linears' activations, S = Q K^T /
    sqrt(hd) over the crop's real keys, P = round(levels exp(S - max)) unsigned (levels 127 with
    `narrow`, the AVX2 build; 255 on VNNI's unsigned side), normalized by sum exp(S - max)."""
    batch, length, width = q.shape
    hd, levels, p_levels = width // heads, 63 if narrow else 127, 127 if narrow else 255
    out = torch.zeros(batch, length, width, dtype=torch.float64)
    for b, n in enumerate(keys.tolist()):
        for h in range(heads):
            cols = slice(h * hd, (h + 1) * hd)
            qh, kh, vh = q[b, :, cols].double(), k[b, :n, cols].double(), v[b, :n, cols].double()
            k_scale, v_scale = kh.abs().amax(1, keepdim=True) / levels, vh.abs().amax(0, keepdim=True) / levels
            kq, vq = torch.round(kh / k_scale), torch.round(vh / v_scale)
            if narrow:
                top, bottom = qh.amax(1, keepdim=True).clamp_min(0), qh.amin(1, keepdim=True).clamp_max(0)
                q_scale = (top - bottom) / 127
                zero = torch.round(-bottom / q_scale)
                qq = (torch.round(qh / q_scale) + zero).clamp(0, 127) - zero
            else:
                q_scale = qh.abs().amax(1, keepdim=True) / 127
                qq = torch.round(qh / q_scale)
            scores = (qq @ kq.t()) * q_scale * k_scale.t() * hd**-0.5
            e = torch.exp(scores - scores.amax(1, keepdim=True))
            out[b, :, cols] = (torch.round(p_levels * e) @ vq) / p_levels / e.sum(1, keepdim=True) * v_scale
    return out


def _attention_matches_its_arithmetic():
    """Crops with padded keys (a batch of crops of different sizes), head widths off 8 (the scalar
    tails) and lengths off every tile edge; relative L2 within 2e-3: the kernel's exp is a
    polynomial (5e-5), which moves an occasional P entry by one step."""
    torch.manual_seed(1)
    for heads, hd, keys in [(2, 72, [100]), (3, 20, [70, 45]), (1, 64, [17, 1, 9]), (2, 8, [33])]:
        q, k, v = (torch.randn(len(keys), max(keys), heads * hd) for _ in range(3))
        q = q + 0.5  # rows not centred on 0: the 7-bit rows' zero point
        keys = torch.tensor(keys)
        got = native.attend_int8(q, k, v, heads, keys).double()
        exact = _attention_exact(q, k, v, heads, keys, native.igemm_narrows())
        assert ((got - exact).norm() / exact.norm()).item() < 2e-3


def _kernel_matches_its_arithmetic():
    """The layer (narrow where the build narrows), the 8-bit product an int8 LLM's prefill calls,
    with and without the GELU in the same pass, and the 7-bit weights with 8-bit activations of an
    int4 LLM's prefill (NARROW_WEIGHTS); the last shape's 4.25 MB output is stored past the caches
    (igemm.c's STREAM_BYTES, on 256-bit builds)."""
    torch.manual_seed(0)
    narrow = native.igemm_narrows()
    for rows, width, out_features in [(1, 4, 1), (37, 70, 53), (9, 64, 40), (130, 256, 33), (1030, 64, 1032)]:
        layer = DynamicInt8Linear(width, out_features)
        x = torch.randn(rows, width) * 3 + torch.rand(rows, 1) * 4  # rows not centred on 0
        with torch.no_grad():
            got = layer(x)
            assert layer._packed is not None  # the int8 path ran
            torch.testing.assert_close(got.double(), _exact(x, layer.weight, layer.bias, narrow), atol=1e-4, rtol=1e-5)
            wq = torch.round(layer.weight / (layer.weight.abs().amax(1, keepdim=True) / 127)).to(torch.int8)
            packed, colsum = native.pack_int8(wq)
            scales = layer.weight.abs().amax(1) / 127
            wide = native.igemm(x, packed, scales, colsum, layer.bias, narrow=native.WIDE)
            fused = native.igemm(x, packed, scales, colsum, layer.bias, gelu=True, narrow=native.WIDE)
            scales7 = layer.weight.abs().amax(1) / 63
            packed7, colsum7 = native.pack_int8(torch.round(layer.weight / scales7[:, None]).to(torch.int8))
            seven = native.igemm(x, packed7, scales7, colsum7, layer.bias, narrow=native.NARROW_WEIGHTS)
        torch.testing.assert_close(wide.double(), _exact(x, layer.weight, layer.bias), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(fused, F.gelu(wide, approximate="tanh"), atol=1e-6, rtol=2e-6)
        expected = _exact(x, layer.weight, layer.bias, weight_levels=63)
        torch.testing.assert_close(seven.double(), expected, atol=1e-4, rtol=1e-5)
    _attention_matches_its_arithmetic()


@needs_native
def test_int8_products_are_exact_in_the_integer_part():
    """Shapes off every tile edge: rows not a multiple of 4, 6 or 8, channels not of 16 or 32, K not
    of 4; and the int8 attention against its arithmetic."""
    _kernel_matches_its_arithmetic()


def _build_for(monkeypatch, tmp_path, march: str):
    monkeypatch.setenv("MINICPMV_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MINICPMV_KERNEL_MARCH", march)
    monkeypatch.setattr(native, "_STATE", {})
    assert native.library() is not None


@pytest.mark.skipif("avx2" not in cpu_flags() or "fma" not in cpu_flags(), reason="needs an AVX2 CPU")
def test_the_avx2_build_computes_the_same(monkeypatch, tmp_path):
    """vpmaddubsw with the sign of w moved onto x: the same exact sums without VNNI; the vision
    layers' narrow form: 7-bit weights, 7-bit unsigned activations with a zero point per row, two
    steps' products added in 16 bits (K not a multiple of 8: the odd last step); and 7-bit
    weights against 8-bit activations offset to unsigned, with no sign step."""
    _build_for(monkeypatch, tmp_path, "haswell")
    assert native.igemm_narrows()
    _kernel_matches_its_arithmetic()
    _int4_prefill_takes_7bit_weights()


def _int4_prefill_takes_7bit_weights():
    """An int4 LLM layer's prefill (64 rows or more) in a build without VNNI: its weight
    requantized to 63 levels, the product with 8-bit activations and no sign step."""
    from minicpmv.quant.linear import Int4Linear
    from minicpmv.quant.schemes import quantize_int4

    torch.manual_seed(2)
    layer = Int4Linear(256, 48, False, 64)
    packed4, scales, zeros = quantize_int4(torch.randn(48, 256), 64)
    layer.qweight.copy_(packed4), layer.scales.copy_(scales), layer.zeros.copy_(zeros)
    x = torch.randn(70, 256)
    half = (layer.scales.clone(), layer.zeros.clone())  # stored: the prefill tiles the layer's own
    with torch.inference_mode():
        got = layer(x)
        seven = native.pack_int4_as_int8(packed4, *half, 64, levels=63)
        eight = native.pack_int4_as_int8(packed4, *half, 64)
    assert torch.equal(got, native.igemm(x, seven[0], seven[2], seven[1], None, narrow=native.NARROW_WEIGHTS))
    assert not torch.equal(got, native.igemm(x, eight[0], eight[2], eight[1], None))


@pytest.mark.skipif(native.avx_vnni_march() is None, reason="needs a CPU with AVX-VNNI or AVX-512 VNNI")
def test_the_avx_vnni_build_computes_the_same(monkeypatch, tmp_path):
    """vpdpbusd on 256 bits (Intel since Alder Lake): 8-bit activations offset to unsigned, the
    offset taken back per channel; exact sums, and nothing narrowed."""
    _build_for(monkeypatch, tmp_path, native.avx_vnni_march())
    assert not native.igemm_narrows()
    _kernel_matches_its_arithmetic()


@needs_native
def test_the_layer_is_a_float_linear_where_the_kernel_does_not_apply():
    torch.manual_seed(0)
    plain = nn.Linear(64, 24)
    layer = nn.Sequential(plain)
    assert use_dynamic_int8(layer) == 1
    turned = layer[0]
    assert isinstance(turned, DynamicInt8Linear) and turned.weight is plain.weight
    x = torch.randn(5, 64, requires_grad=True)
    turned(x).sum().backward()  # training: the float product, with gradients
    assert turned._packed is None and x.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(turned(x), plain(x), rtol=0.03, atol=0.03)
        first = turned._packed
        turned.weight.mul_(2)  # changed in place: packed again
        assert turned._packed is first
        torch.testing.assert_close(turned(x), nn.functional.linear(x, turned.weight, turned.bias), rtol=0.03, atol=0.06)
        assert turned._packed is not first


@needs_native
@pytest.mark.parametrize("low_memory", [False, True])
def test_int8_vision_features_stay_close_to_float32(low_memory):
    image = Image.open(REFERENCE / "images" / "img_b_640x448.png")
    messages = [{"role": "user", "content": [image, "What is in the picture?"]}]
    reference = load(TINY["2.6"] / "checkpoint", vision_dtype="float32")
    int8 = load(TINY["2.6"] / "checkpoint", vision_dtype="int8", low_memory=low_memory)
    layers = [m for m in int8.model.vpm.modules() if isinstance(m, DynamicInt8Linear)]
    assert len(layers) == 6 * len(int8.model.vpm.encoder.layers)
    ids, expected = reference.prompt_embeddings(messages)
    same_ids, got = int8.prompt_embeddings(messages)
    assert same_ids == ids
    assert 0 < ((got - expected).norm() / expected.norm()).item() < 0.02
    assert all(layer._packed is not None for layer in layers)


@needs_native
def test_gelu_inside_the_int8_product_is_torchs_tanh_gelu():
    """GeluFusedMLP: the tanh GELU applied to each output tile inside the int8 product (a
    polynomial exp) gives torch's F.gelu(approximate="tanh") of the same product, saturating
    alike at large |x|; use_dynamic_int8 fuses the SigLIP MLPs and their outputs stay the same."""
    torch.manual_seed(0)
    layer = nn.Linear(96, 70)  # 70 channels: a part-filled tile at the edge
    use_dynamic_int8(holder := nn.Sequential(layer))
    fc1 = holder[0]
    x = torch.randn(37, 96) * torch.tensor([0.1, 1.0, 30.0]).repeat_interleave(torch.tensor([12, 12, 13]))[:, None]
    with torch.inference_mode():
        plain = fc1(x)
        fc1.gelu = True
        fused = fc1(x)
    torch.testing.assert_close(fused, F.gelu(plain, approximate="tanh"), atol=1e-6, rtol=2e-6)
    from minicpmv.model.config import VisionConfig
    from minicpmv.model.vision import SiglipMLP

    mlp = SiglipMLP(VisionConfig(hidden_size=64, intermediate_size=160, gelu_tanh=True))
    tower = nn.Sequential(mlp)
    use_dynamic_int8(tower)
    assert type(tower[0]).__name__ == "GeluFusedMLP"
    x = torch.randn(50, 64)
    with torch.inference_mode():
        fused = tower(x)
        tower[0].fc1.gelu = False
        unfused = tower[0].fc2(F.gelu(tower[0].fc1(x), approximate="tanh"))
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=1e-5)


@needs_native
def test_int8_attention_padded_keys_change_nothing_and_it_stays_close_to_float():
    """A crop padded to a longer one's length (keys past its count: garbage) gets the outputs it
    gets alone, bit for bit; against float32 softmax attention the int8 one stays within 5%
    (relative L2, random q/k/v: flat attention over 256 keys, the hardest case for 7-bit P)."""
    torch.manual_seed(2)
    heads, hd, length, real = 4, 32, 256, 190
    q, k, v = (torch.randn(2, length, heads * hd) for _ in range(3))
    batch = native.attend_int8(q, k, v, heads, torch.tensor([length, real]))
    alone = native.attend_int8(*(t[1:, :real].contiguous() for t in (q, k, v)), heads, torch.tensor([real]))
    assert torch.equal(batch[1:, :real], alone)
    split = (t.view(2, length, heads, hd).transpose(1, 2) for t in (q, k, v))
    mask = torch.zeros(2, 1, 1, length)
    mask[1, ..., real:] = float("-inf")
    exact = F.scaled_dot_product_attention(*split, attn_mask=mask).transpose(1, 2).reshape(2, length, -1)
    assert 0 < ((batch - exact).norm() / exact.norm()).item() < 0.05


@needs_native
def test_int8_attention_runs_in_the_tower_and_gives_way_where_it_does_not_apply(monkeypatch):
    """use_dynamic_int8 turns NavitSiglip's attentions: two crops of different sizes in one batch
    (a padding mask) give what each gives alone; under autograd, or for sequences under
    MIN_KEYS (4.6's 2x2 merger windows), the float attention runs, as the model's own."""
    from minicpmv.model.config import VisionConfig
    from minicpmv.model.vision import NavitAttention, NavitSiglip
    from minicpmv.quant.dynamic import MIN_KEYS, DynamicInt8Attention

    torch.manual_seed(3)
    cfg = VisionConfig(hidden_size=64, intermediate_size=96, num_layers=2, num_heads=2, gelu_tanh=True)
    tower = NavitSiglip(cfg).eval()
    use_dynamic_int8(tower)
    assert all(type(layer.self_attn) is DynamicInt8Attention for layer in tower.encoder.layers)
    calls = []
    kernel = native.attend_int8
    monkeypatch.setattr(native, "attend_int8", lambda *a: calls.append(a[4].tolist()) or kernel(*a))
    sizes = torch.tensor([[10, 12], [9, 8]])  # 120 and 72 patches
    strips = torch.randn(2, 3, 14, 14 * 120)
    with torch.inference_mode():
        both = tower(strips, sizes)
        second = tower(strips[1:, :, :, : 14 * 72], sizes[1:])
    assert calls[0] == [120, 72] and calls[-1] == [72]
    torch.testing.assert_close(both[1, :72], second[0], atol=1e-5, rtol=1e-5)
    attention = tower.encoder.layers[0].self_attn
    x = torch.randn(1, MIN_KEYS - 1, 64)
    calls.clear()
    with torch.inference_mode():
        short, plain = attention(x, None), NavitAttention.forward(attention, x, None)
    assert not calls
    torch.testing.assert_close(short, plain)
    x = torch.randn(1, 100, 64, requires_grad=True)
    attention(x, None).sum().backward()
    assert not calls and x.grad is not None
