"""Weight-only int8/int4 quantization: scheme error bounds, fused kernels vs the reference path,
layer choice, quantize -> save -> load -> same outputs, the CLI and its quality report."""

import json

import pytest
import torch

from minicpmv import CheckpointError, ConfigError
from minicpmv.cli import main
from minicpmv.model.checkpoint import load_model, save_model
from minicpmv.quant import QuantConfig, layer_bits, quantize_model
from minicpmv.quant import linear as qlinear
from minicpmv.quant.linear import Int4Linear, Int8Linear
from minicpmv.quant.schemes import dequantize_int4, dequantize_int8, quantize_int4, quantize_int8, unpack_int4

from conftest import TINY


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


def filled(module, w):
    if isinstance(module, Int8Linear):
        module.qweight, module.scales = quantize_int8(w)
    else:
        module.qweight, module.scales, module.zeros = quantize_int4(w, module.group_size)
    return module


@pytest.mark.parametrize("make,in_features,out_features", [
    (lambda i, o: Int8Linear(i, o, True), 128, 96),
    (lambda i, o: Int8Linear(i, o, False), 40, 24),  # width the int8 kernel cannot take: reference path
    (lambda i, o: Int4Linear(i, o, True, 32), 128, 96),
    (lambda i, o: Int4Linear(i, o, False, 64), 128, 40),  # out_features not a multiple of 16
])
def test_fused_kernels_agree_with_the_reference_path(make, in_features, out_features):
    module = filled(make(in_features, out_features), torch.randn(out_features, in_features) / in_features ** 0.5)
    x = torch.randn(2, 7, in_features)
    fused = module(x)
    qlinear.KERNEL["mode"] = "reference"
    try:
        reference = module(x)
    finally:
        qlinear.KERNEL["mode"] = "auto"
    assert fused.shape == (2, 7, out_features) and fused.dtype == torch.float32
    torch.testing.assert_close(fused, reference, atol=0.05, rtol=0.02)  # bf16 activations in the kernels


def test_layer_choice():
    model = load_model(TINY["2.6"] / "checkpoint")
    plan = layer_bits(model, QuantConfig(bits=4, group_size=64))
    assert plan["llm.lm_head"] == 8 and plan["llm.model.layers.0.mlp.down_proj"] == 4
    assert not any(name.startswith(("vpm.", "resampler.")) for name in plan)
    with_vision = layer_bits(model, QuantConfig(bits=4, group_size=64, vision_bits=8))
    assert with_vision["resampler.kv_proj"] == 8 and with_vision["vpm.encoder.layers.0.mlp.fc1"] == 8
    assert "resampler.attn.out_proj" not in with_vision
    assert layer_bits(model, QuantConfig(bits=4, group_size=128))["llm.model.layers.0.self_attn.q_proj"] == 4
    with pytest.raises(ConfigError, match="bits"):
        QuantConfig(bits=3)


@pytest.mark.parametrize("version,config", [
    ("2.6", QuantConfig(bits=8)), ("2.6", QuantConfig(bits=4, group_size=32, vision_bits=8)),
    ("2.0", QuantConfig(bits=4, group_size=64, vision_bits=8)), ("2.5", QuantConfig(bits=4, group_size=128))])
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
    assert main(["quantize", "-m", str(TINY["2.6"] / "checkpoint"), "-o", str(out), "--bits", "4",
                 "--group-size", "32", "--check", "--check-tokens", "6"]) == 0
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
