"""A quantized LLM's SwiGLU MLP with silu(gate) * up inside the up projection's int8 GEMM
(quant/swiglu.py, the gate epilogue of kernels/igemm.h): the model's MLP product up to float32
rounding where it applies, the model's own path where it does not, and installed by quantization."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minicpmv.model.blocks import MLP
from minicpmv.model.llm import LanguageModel, LLMConfig
from minicpmv.quant import QuantConfig, native, quantize_model
from minicpmv.quant import linear as qlinear
from minicpmv.quant.apply import quantize_weight
from minicpmv.quant.linear import Int4Linear, Int8Linear
from minicpmv.quant.swiglu import SwiGLUFusedMLP, fuse_swiglu

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"native kernels: {native.why_unavailable()}")

HIDDEN = 128


def quantized_mlp(bits: int, intermediate: int) -> SwiGLUFusedMLP:
    """An MLP whose three linears are int4 (groups of 32) or int8 layers of random weights."""
    torch.manual_seed(0)
    mlp = MLP(HIDDEN, intermediate)
    for name in ("gate_proj", "up_proj", "down_proj"):
        linear = getattr(mlp, name)
        weight = torch.randn(linear.out_features, linear.in_features) / linear.in_features**0.5
        group = 32 if bits == 4 and linear.in_features % 32 == 0 else None
        layer = (
            Int4Linear(linear.in_features, linear.out_features, False, 32)
            if group
            else Int8Linear(linear.in_features, linear.out_features, False)
        )
        for key, tensor in quantize_weight(weight, 4 if group else 8, 32).items():
            setattr(layer, key, tensor)
        setattr(mlp, name, layer)
    assert fuse_swiglu(mlp) == 1
    return mlp


def gates_seen(monkeypatch) -> list:
    """Whether each call of the int8 GEMM was given a gate, in call order."""
    seen, gemm = [], native.igemm
    monkeypatch.setattr(native, "igemm", lambda *args, **kw: seen.append(args[7] is not None) or gemm(*args, **kw))
    return seen


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("intermediate", [96, 37])  # 37: the kernels' scalar edge after whole vectors
@pytest.mark.parametrize("shape", [(1, 70), (2, 40)])
def test_the_fused_product_is_the_models_mlp_up_to_float32_rounding(bits, intermediate, shape, monkeypatch):
    """Same integer products on both sides; only silu's evaluation (our exp against ATen's) and the
    order of the last multiplies differ."""
    mlp = quantized_mlp(bits, intermediate)
    x = torch.randn(*shape, HIDDEN)
    seen = gates_seen(monkeypatch)
    fused = mlp(x)
    assert seen[:2] == [False, True]  # gate's GEMM as usual, up's with the gate in its epilogue
    models = MLP.forward(mlp, x)
    torch.testing.assert_close(fused, models, atol=2e-6 * models.abs().max().item(), rtol=1e-5)
    # and the model's MLP on dequantized weights, as the reference path computes it
    previous, qlinear.KERNEL["mode"] = qlinear.KERNEL["mode"], "reference"
    try:
        reference = MLP.forward(mlp, x)
    finally:
        qlinear.KERNEL["mode"] = previous
    torch.testing.assert_close(fused, reference, atol=0.05 * reference.abs().max().item(), rtol=0)


def test_the_models_path_where_the_gemm_does_not_apply_or_a_hook_keeps_the_gate(monkeypatch):
    """Short inputs (decoding sizes), bfloat16 inputs, autograd, and a hook on the gate projection
    (it would see its output written over) take the model's forward; the hook's tensor stays the gate's."""
    mlp = quantized_mlp(8, 96)
    seen = gates_seen(monkeypatch)
    for x in (torch.randn(1, 3, HIDDEN), torch.randn(1, 70, HIDDEN, dtype=torch.bfloat16)):
        mlp(x)
    with torch.enable_grad():
        mlp(torch.randn(1, 70, HIDDEN, requires_grad=True))
    kept = []
    mlp.gate_proj.register_forward_hook(lambda module, args, out: kept.append(out))
    x = torch.randn(1, 70, HIDDEN)
    out = mlp(x)
    assert not any(seen)
    torch.testing.assert_close(kept[0], mlp.gate_proj(x))
    torch.testing.assert_close(out, mlp.down_proj(F.silu(kept[0]) * mlp.up_proj(x)))


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_quantizing_an_llm_fuses_its_mlps_where_they_have_quantized_projections(bits, monkeypatch):
    cfg = LLMConfig(
        family="qwen2", hidden_size=HIDDEN, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
        vocab_size=300,
    )  # fmt: skip
    llm = LanguageModel(cfg)

    class Holder(torch.nn.Module):  # what quantize_model takes: .llm and .config.raw
        def __init__(self):
            super().__init__()
            self.llm = llm
            self.config = type("Config", (), {"raw": {}})()

    quantize_model(Holder(), QuantConfig(bits=bits, group_size=32))
    assert all(type(layer.mlp) is SwiGLUFusedMLP for layer in llm.model.layers)
    seen = gates_seen(monkeypatch)
    with torch.inference_mode():
        llm(llm.embed(torch.arange(80)[None]), cache=llm.new_cache(1, 80))
    # bfloat16 weights (bits 16) have no int8 GEMM: nothing fused, the model's product
    assert seen.count(True) == (0 if bits == 16 else cfg.num_layers)
