"""Weight-only int8/int4 quantization: scheme error bounds, fused kernels vs the reference path,
layer choice, quantize -> save -> load -> same outputs, the CLI and its quality report."""

import json
import shutil

import pytest
import safetensors.torch
import torch
from conftest import TINY
from quant_layers import filled, with_kernel

from minicpmv import CheckpointError, ConfigError
from minicpmv.cli import main
from minicpmv.cpu import cpu_flags
from minicpmv.model.checkpoint import load_model, save_model
from minicpmv.quant import QuantConfig, layer_bits, native, quantize_model
from minicpmv.quant import linear as qlinear
from minicpmv.quant.linear import Bf16Linear, Int4Linear, Int8Linear
from minicpmv.quant.schemes import dequantize_int4, dequantize_int8, quantize_int4, quantize_int8, unpack_int4


def test_int8_error_is_within_half_a_step():
    w = torch.randn(64, 96)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    assert ((dequantize_int8(q, scale) - w).abs() <= scale[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_int4_error_is_within_half_a_step_and_packing_round_trips(group_size):
    w = torch.randn(48, 256)
    packed, scales, zeros = quantize_int4(w, group_size)
    assert packed.shape == (48, 128) and scales.shape == (48, 256 // group_size)
    q = unpack_int4(packed)
    assert q.min() >= 0 and q.max() <= 15
    assert torch.equal(unpack_int4(q[:, 0::2].to(torch.uint8) | (q[:, 1::2].to(torch.uint8) << 4)), q)
    step = scales.repeat_interleave(group_size, dim=1)
    assert ((dequantize_int4(packed, scales, zeros) - w).abs() <= step / 2 + 1e-5).all()
    with pytest.raises(ValueError, match="group_size"):
        quantize_int4(torch.randn(4, 96), 64)


LAYERS = [
    (lambda i, o: Int8Linear(i, o, True), 128, 96),
    (lambda i, o: Int8Linear(i, o, False), 40, 24),  # width no kernel takes: reference path
    (lambda i, o: Int4Linear(i, o, True, 32), 128, 96),
    (lambda i, o: Int4Linear(i, o, False, 64), 128, 40),  # out_features not a multiple of 16 (nor of 16 rows a tile)
    (lambda i, o: Int4Linear(i, o, False, 128), 256, 37),
]


def _atol(module, rows: int, narrows: bool) -> float:
    """An int4 prefill without VNNI (`narrows`) takes 7-bit weights (igemm's NARROW_WEIGHTS):
    twice the requantization's rounding, still a small part of int4's own (1-2% of it)."""
    return 0.08 if narrows and isinstance(module, Int4Linear) and rows >= qlinear.IGEMM_MIN_ROWS else 0.05


@pytest.mark.parametrize("mode", ["auto", "torch"])
@pytest.mark.parametrize("make,in_features,out_features", LAYERS)
def test_kernels_agree_with_the_reference_path(mode, make, in_features, out_features):
    module = filled(make(in_features, out_features), torch.randn(out_features, in_features) / in_features**0.5)
    for shape in [
        (2, 7, in_features),
        (1, 1, in_features),
        (5, in_features),
        (1, 40, in_features),
        (2, 70, in_features),
    ]:  # + widened prefill, + prefill through the int8 x int8 GEMM (from 64 rows)
        x = torch.randn(*shape)
        fast = with_kernel(mode, lambda: module(x))
        reference = with_kernel("reference", lambda: module(x))
        assert fast.shape == (*shape[:-1], out_features) and fast.dtype == torch.float32
        # bf16 activations (torch's kernels) or int8 activations (ours) against float32
        narrows = mode == "auto" and native.library() is not None and native.igemm_narrows()
        torch.testing.assert_close(fast, reference, atol=_atol(module, x.numel() // in_features, narrows), rtol=0.02)


needs_native = pytest.mark.skipif(native.library() is None, reason=f"native kernels: {native.why_unavailable()}")


@needs_native
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_native_int4_matches_its_own_arithmetic_exactly_enough(group_size):
    """Against the same computation done in float64 by torch: int8 activations in blocks of one
    group ([even, odd] columns do not change a dot product), float16 scales and zeros."""
    torch.manual_seed(0)
    rows, out_features, in_features = 6, 21, 256
    packed, scales, zeros = quantize_int4(torch.randn(out_features, in_features), group_size)
    x = torch.randn(rows, in_features) * 3
    blocks = x.view(rows, -1, group_size).double()  # (M, G, g)
    x_scale = blocks.abs().amax(-1, keepdim=True).float().double() / 127
    xq = torch.round(blocks / x_scale) * x_scale
    s, z = scales.half().double(), zeros.half().double()
    w = (unpack_int4(packed).double().view(out_features, -1, group_size) - 8) * s[..., None]  # (N, G, g)
    expected = torch.einsum("mgk,ngk->mn", xq, w) + torch.einsum("mg,ng->mn", blocks.sum(-1), z)
    got = native.gemm_int4(x, packed, scales.half(), zeros.half(), group_size)
    torch.testing.assert_close(got.double(), expected, atol=1e-3, rtol=1e-4)


@needs_native
@pytest.mark.parametrize("levels", [127, 63])
def test_int4_prefill_requantization_is_within_half_an_int8_step(levels):
    """A prefill's int4 weight is repacked per call as per-channel int8 for the int8 x int8 GEMM
    (63 levels: the 7-bit weights of a build without VNNI): each value within half a step of the
    int4 one, the scale from the group parameters alone (|w| peaks at q = 0 or 15), and the
    product that of those integers exactly, with 8-bit activations either way."""
    torch.manual_seed(0)
    out_features, in_features, group = 37, 256, 64  # 37: a part-filled last panel of 16 channels
    packed4, scales, zeros = quantize_int4(torch.randn(out_features, in_features), group)
    scales, zeros = scales.half(), zeros.half()
    packed, colsum, wscales = native.pack_int4_as_int8(packed4, scales, zeros, group, levels=levels)
    panels = (out_features + 15) // 16
    # (panel, k / 4, channel, k % 4) -> (channel, k)
    q8 = packed.view(panels, in_features // 4, 16, 4).permute(0, 2, 1, 3).reshape(panels * 16, in_features)
    assert (q8[out_features:] == 0).all()
    q8 = q8[:out_features].float()
    exact = dequantize_int4(packed4, scales.float(), zeros.float())
    assert ((q8 * wscales[:, None] - exact).abs() <= wscales[:, None] / 2 + 1e-6).all()
    assert torch.allclose(wscales, exact.abs().amax(1) / levels, rtol=1e-6) and q8.abs().max() <= levels
    assert torch.equal(colsum, (128 * q8.sum(1)).int())
    x = torch.randn(70, in_features)
    x_scale = x.abs().amax(1, keepdim=True) / 127
    expected = (torch.round(x / x_scale) * x_scale).double() @ (q8 * wscales[:, None]).double().t()
    narrow = native.WIDE if levels == 127 else native.NARROW_WEIGHTS
    got = native.igemm(x, packed, wscales, colsum, None, narrow=narrow)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-5)


@needs_native
def test_int8_prefill_repack_is_the_panel_layout():
    """An int8 prefill repacks the stored weight per call into igemm's panels (16 channels x 4 k,
    zeros past N and K) with 128 x each channel's sum: 16 columns at a time by a transpose, the
    last part-filled panel and K's tail byte by byte."""
    torch.manual_seed(0)
    for out_features, in_features in [(16, 16), (48, 192), (53, 70), (32, 36)]:
        qweight = torch.randint(-127, 128, (out_features, in_features), dtype=torch.int8)
        panels, width = (out_features + 15) // 16, (in_features + 3) // 4 * 4
        padded = torch.zeros(panels * 16, width, dtype=torch.int8)
        padded[:out_features, :in_features] = qweight
        # (channel, k) -> (panel, k / 4, channel, k % 4)
        expected = padded.view(panels, 16, width // 4, 4).permute(0, 2, 1, 3).reshape(-1)
        packed, colsum = native.pack_int8(qweight)
        assert torch.equal(packed, expected)
        assert torch.equal(colsum, 128 * qweight.int().sum(1))


@needs_native
def test_native_int8_error_is_that_of_int8_activations():
    torch.manual_seed(0)
    weight = torch.randn(64, 512) / 512**0.5
    q, scale = quantize_int8(weight)
    x = torch.randn(9, 512)
    exact = x @ dequantize_int8(q, scale).t()
    got = native.gemm_int8(x, q, scale)
    relative = ((got - exact).norm() / exact.norm()).item()
    assert 1e-5 < relative < 0.01  # activations are rounded (not a float path), by little


def test_native_kernels_fall_back_cleanly_without_a_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("MINICPMV_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "_STATE", {})
    if "avx2" in cpu_flags():  # elsewhere no build is tried, so nothing to warn of
        with pytest.warns(RuntimeWarning, match="native int8 kernels unavailable"):
            assert native.library() is None
    assert native.library() is None and native.why_unavailable()
    module = filled(Int4Linear(64, 32, False, 32), torch.randn(32, 64))
    x = torch.randn(3, 64)
    torch.testing.assert_close(module(x), with_kernel("reference", lambda: module(x)), atol=0.05, rtol=0.02)
    monkeypatch.setenv("MINICPMV_QUANT_KERNEL", "torch")
    monkeypatch.setattr(native, "_STATE", {})
    assert native.library() is None and "MINICPMV_QUANT_KERNEL" in native.why_unavailable()


@pytest.mark.parametrize("mode", ["auto", "reference"])
def test_bf16_weights_give_the_float32_results_of_the_rounded_weights(mode):
    """bits=16 is lossless for a bfloat16 checkpoint: the same logits as float32 weights holding
    the same (bf16-representable) values, decode-sized and prefill-sized."""
    torch.manual_seed(0)
    model = load_model(TINY["2.6"] / "checkpoint")
    with torch.no_grad():
        for name in layer_bits(model, QuantConfig(bits=16)):
            weight = model.get_submodule(name).weight
            weight.copy_(weight.to(torch.bfloat16).float())
    ids = torch.randint(0, 300, (1, 40))
    with torch.inference_mode():
        expected = [model.llm(model.llm.embed(ids[:, :n])) for n in (1, 40)]
        quantize_model(model, QuantConfig(bits=16))
        assert isinstance(model.llm.lm_head, Bf16Linear) and model.llm.lm_head.weight.dtype == torch.bfloat16
        got = with_kernel(mode, lambda: [model.llm(model.llm.embed(ids[:, :n])) for n in (1, 40)])
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_layer_choice():
    model = load_model(TINY["2.6"] / "checkpoint")
    plan = layer_bits(model, QuantConfig(bits=4, group_size=64))
    assert plan["llm.lm_head"] == 8 and plan["llm.model.layers.0.mlp.down_proj"] == 4
    assert not any(name.startswith(("vpm.", "resampler.")) for name in plan)
    with_vision = layer_bits(model, QuantConfig(bits=4, group_size=64, vision_bits=8))
    assert with_vision["resampler.kv_proj"] == 8 and with_vision["vpm.encoder.layers.0.mlp.fc1"] == 8
    assert "resampler.attn.out_proj" not in with_vision
    assert layer_bits(model, QuantConfig(bits=4, group_size=128))["llm.model.layers.0.self_attn.q_proj"] == 4
    assert layer_bits(model, QuantConfig(bits=4, group_size=64, lm_head_bits=4))["llm.lm_head"] == 4
    with pytest.raises(ConfigError, match="bits"):
        QuantConfig(bits=3)
    with pytest.raises(ConfigError, match="lm_head_bits 4, 8 or 16"):
        QuantConfig(bits=4, lm_head_bits=2)


@pytest.mark.parametrize(
    "version,config",
    [
        ("2.6", QuantConfig(bits=8)),
        ("2.6", QuantConfig(bits=4, group_size=32, vision_bits=8)),
        ("2.0", QuantConfig(bits=4, group_size=64, vision_bits=8)),
        ("2.5", QuantConfig(bits=4, group_size=128)),
        ("2.6", QuantConfig(bits=16)),
    ],
)
def test_quantize_save_load_gives_the_same_outputs(version, config, tmp_path):
    quantized = quantize_model(load_model(TINY[version] / "checkpoint"), config)
    save_model(quantized, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert QuantConfig.from_dict(saved) == config
    reloaded = load_model(tmp_path)
    assert set(reloaded.state_dict()) == set(quantized.state_dict())
    ids = torch.randint(0, 300, (1, 30))
    crops = [torch.randn(3, 14, 14 * 6)]
    sizes = torch.tensor([[2, 3]])
    with torch.inference_mode():
        for model in (quantized, reloaded):
            model.outputs = (model.llm(model.llm.embed(ids)), model.get_image_features(crops, sizes))
    assert torch.equal(quantized.outputs[0], reloaded.outputs[0])
    assert torch.equal(quantized.outputs[1], reloaded.outputs[1])


def test_bad_quantization_config_in_a_folder(tmp_path):
    save_model(quantize_model(load_model(TINY["2.6"] / "checkpoint"), QuantConfig(bits=8)), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"]["bits"] = 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="bits: 2"):
        load_model(tmp_path)
    config["quantization_config"]["bits"] = 4  # the stored tensors are int8: a layout mismatch
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError):
        load_model(tmp_path)


def test_quantize_cli_with_check_and_generate_on_the_result(tmp_path, capsys):
    out = tmp_path / "int4"
    assert (
        main(
            [
                "quantize",
                "-m",
                str(TINY["2.6"] / "checkpoint"),
                "-o",
                str(out),
                "--bits",
                "4",
                "--group-size",
                "32",
                "--check",
                "--check-tokens",
                "6",
                "--lm-head-bits",
                "4",
            ]
        )
        == 0
    )
    saved = json.loads((out / "config.json").read_text())["quantization_config"]
    assert saved["lm_head_bits"] == 4 and isinstance(load_model(out).llm.lm_head, Int4Linear)
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["num_samples"] == 3 and 0.0 <= summary["top1_agreement"] <= 1.0 and summary["mean_kl"] >= 0.0
    assert (out / "tokenizer.json").exists() and not list(out.glob("*.py"))
    assert main(["generate", "-m", str(out), "-p", "hi", "-n", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"]
    assert main(["quantize", "-m", str(TINY["2.6"] / "checkpoint"), "-o", str(out)]) == 2  # not empty
    assert "not empty" in capsys.readouterr().err


def test_quality_report_of_a_model_against_itself_is_perfect():
    from minicpmv import load
    from minicpmv.quant.quality import compare

    chat = load(TINY["2.5"] / "checkpoint")
    report = compare(chat, chat, new_tokens=4)
    assert report["top1_agreement"] == 1.0 and report["mean_kl"] < 1e-6 and report["greedy_text_equal"] == 3


@pytest.mark.skipif("avx2" not in cpu_flags() or "fma" not in cpu_flags(), reason="needs an AVX2 CPU")
@pytest.mark.parametrize("march", ["haswell", "avx-vnni", "x86-64-v2"])
def test_kernels_built_for_other_instruction_sets(march, monkeypatch, tmp_path):
    """The AVX2-only build (no VNNI, no AVX-512: vpmaddubsw, 256-bit tiles) and the AVX-VNNI one
    (vpdpbusd on 256 bits) give the same numbers as the reference, for tiles of every group size
    and at the int16 bound of the AVX2 tiles' partial sums (nibbles 15 against activations 127);
    a CPU level below AVX2 refuses to build and falls back."""
    vnni = march == "avx-vnni"
    if vnni:
        if native.avx_vnni_march() is None:
            pytest.skip("needs a CPU with AVX-VNNI or AVX-512 VNNI")
        march = native.avx_vnni_march()
    monkeypatch.setenv("MINICPMV_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MINICPMV_KERNEL_MARCH", march)
    monkeypatch.setattr(native, "_STATE", {})
    if march == "x86-64-v2":
        with pytest.warns(RuntimeWarning, match="unavailable"):
            assert native.library() is None
        return
    assert native.library() is not None
    assert native.kernel_isa() == ("AVX-VNNI" if vnni else "AVX2")
    torch.manual_seed(0)
    tiled = [(lambda i, o, g=g: Int4Linear(i, o, False, g), 256, 32) for g in (64, 128)]
    for make, in_features, out_features in LAYERS + tiled + [(lambda i, o: Int4Linear(i, o, True, 64), 128, 19)]:
        module = filled(make(in_features, out_features), torch.randn(out_features, in_features) / in_features**0.5)
        for rows in (1, 6, 70):
            x = torch.randn(rows, in_features)
            got = module(x)
            if rows == 1 and isinstance(module, Int8Linear) and out_features % 16 == 0:
                assert module.tiled()  # AVX2 too: vpmaddubsw on |w|, the sign moved onto x
            seven = _atol(module, rows, not vnni) > 0.05
            expected = with_kernel("reference", lambda: module(x))
            torch.testing.assert_close(got, expected, atol=_atol(module, rows, not vnni), rtol=0.02)
            assert ((got - expected).norm() / expected.norm()).item() < (0.02 if seven else 0.012)
    extreme = torch.ones(32, 256)
    extreme[:, ::64] = -1.0  # one low weight per group: the others quantize to nibble 15
    module = filled(Int4Linear(256, 32, False, 64), extreme)
    assert (unpack_int4(module.qweight) == 15).float().mean() > 0.9
    x = torch.ones(1, 256)  # every activation quantizes to 127
    out = module(x)
    assert module.tiled()
    torch.testing.assert_close(out, with_kernel("reference", lambda: module(x)), atol=0.05, rtol=1e-3)
    # AVX2 int8 tiles at vpmaddubsw's int16 bound: pairs of w = -128 (or 127) against activations 127
    module = Int8Linear(256, 32, False)
    module.qweight = torch.tensor([[-128], [127]], dtype=torch.int8).repeat(16, 256)
    module.scales = torch.full((32,), 1e-3)
    out = module(x)
    assert module.tiled()
    torch.testing.assert_close(out, with_kernel("reference", lambda: module(x)), atol=1e-4, rtol=1e-5)
    weight = torch.randn(40, 64).to(torch.bfloat16)
    x = torch.randn(3, 64)
    torch.testing.assert_close(native.gemm_bf16(x, weight), x @ weight.float().t(), atol=1e-5, rtol=1e-5)


def test_info_system_names_the_kernels_this_machine_runs(capsys, monkeypatch, tmp_path):
    """`minicpmv info --system`: the instruction set of the built kernels (an AVX2 build says
    so), native bf16 and what `--vision-dtype auto` picks from it, as llama.cpp's system line."""
    assert main(["info", "--system", "--json"]) == 0
    system = json.loads(capsys.readouterr().out)["system"]
    assert system["native_bf16"] == ("avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags())
    untuned = "int8" if native.library() is not None else "float32"
    assert system["vision_dtype_auto"] == ("bfloat16" if system["native_bf16"] else untuned)
    if native.library() is None:
        assert system["kernels"].startswith("none (")
        return
    assert system["kernels"] in ("AVX-512 VNNI", "AVX-VNNI", "AVX2")
    monkeypatch.setenv("MINICPMV_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MINICPMV_KERNEL_MARCH", "haswell")
    monkeypatch.setattr(native, "_STATE", {})
    assert main(["info", "-m", str(TINY["2.6"] / "checkpoint"), "--system"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("MiniCPM-V 2.6") and "native kernels: AVX2;" in text


@pytest.mark.parametrize("version", ["1.0", "4.5"])
def test_quantize_int4_reload_and_generate_on_the_new_versions(version, tmp_path, capsys):
    """`quantize --bits 4` -> reload -> generate from the CLI (4.5: Qwen3 with q/k norms; 1.0:
    the stored resampler table stays float)."""
    out = tmp_path / "int4"
    source = TINY[version] / "checkpoint"
    assert main(["quantize", "-m", str(source), "-o", str(out), "--bits", "4", "--group-size", "32"]) == 0
    capsys.readouterr()
    case = json.loads((TINY[version] / "case_single" / "messages.json").read_text())
    image = str(TINY[version].parent / case[0]["content"][0]["image"])
    argv = ["generate", "-m", str(out), "--image", image, "-p", "What is in the image?", "-n", "8", "--json"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    expected = safetensors.torch.load_file(TINY[version] / "case_single" / "expected.safetensors")
    assert record["prompt_token_ids"] == expected["input_ids"][0].tolist()
    assert len(record["token_ids"]) == 8


@pytest.mark.parametrize("config", [QuantConfig(bits=4, group_size=32, vision_bits=8), QuantConfig(bits=8)])
def test_streamed_quantize_writes_what_the_in_memory_path_writes(config, tmp_path, monkeypatch):
    """quantize_checkpoint reads and writes tensor by tensor (shards of a set size, rows in
    blocks); its tensors are those of quantize_model on the loaded model, bit for bit, in any
    sharding, in files safetensors itself reads."""
    from minicpmv.model.checkpoint import weight_files
    from minicpmv.quant import stream
    from minicpmv.quant.folder import quantize_checkpoint
    from minicpmv.quant.stream import ShardWriter, quantize_folder

    monkeypatch.setattr(stream, "ROWS_PER_STEP", 7)  # every weight in several row blocks
    source = TINY["2.6"] / "checkpoint"
    quantize_checkpoint(source, tmp_path / "streamed", config)
    save_model(quantize_model(load_model(source), config), tmp_path / "in-memory")

    def tensors(folder):
        out = {}
        for path in set(weight_files(folder).values()):
            out.update(safetensors.torch.load_file(path))
        return out

    streamed, reference = tensors(tmp_path / "streamed"), tensors(tmp_path / "in-memory")
    assert set(streamed) == set(reference)
    assert all(torch.equal(streamed[n], reference[n]) and streamed[n].dtype == reference[n].dtype for n in reference)
    small = tmp_path / "sharded"
    small.mkdir()
    original = ShardWriter.__init__.__defaults__
    ShardWriter.__init__.__defaults__ = (200_000,)  # many shards: the index path
    try:
        quantize_folder(source, small, config)
    finally:
        ShardWriter.__init__.__defaults__ = original
    assert (small / "model.safetensors.index.json").exists()
    assert all(torch.equal(t, reference[n]) for n, t in tensors(small).items())


def test_a_bfloat16_source_stays_bfloat16_where_not_quantized(tmp_path):
    """The official checkpoints are bfloat16: norms and embeddings keep that dtype (the output
    does not grow), and the reloaded model answers as the in-memory quantization of it."""
    from minicpmv.quant.folder import quantize_checkpoint

    source = tmp_path / "bf16"
    shutil.copytree(TINY["2.6"] / "checkpoint", source)
    weights = safetensors.torch.load_file(source / "model.safetensors")
    safetensors.torch.save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, source / "model.safetensors")
    config = QuantConfig(bits=4, group_size=32)
    report = quantize_checkpoint(source, tmp_path / "int4", config)
    out = safetensors.torch.load_file(tmp_path / "int4" / "model.safetensors")
    assert out["llm.model.embed_tokens.weight"].dtype == torch.bfloat16
    assert out["vpm.post_layernorm.weight"].dtype == torch.bfloat16
    assert report["output_bytes"] < report["input_bytes"]
    ids = torch.randint(0, 300, (1, 20))
    with torch.inference_mode():
        again = load_model(tmp_path / "int4")
        reloaded = again.llm(again.llm.embed(ids))
        model = quantize_model(load_model(source), config)
        expected = model.llm(model.llm.embed(ids))
    torch.testing.assert_close(reloaded, expected, atol=0, rtol=0)
