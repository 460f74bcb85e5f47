"""A prompt through 4.7's mixture of experts with its int4 experts grouped into two native calls a
layer (quant/moe.py, kernels/tiles.c's minicpmv_int4_experts): the model's SparseMoE output up to
float32 rounding, the model's own path wherever the grouped call does not apply, and installed by
quantization."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_QWEN35

from minicpmv.model.llm import LanguageModel, LLMConfig
from minicpmv.model.qwen35 import SparseMoE
from minicpmv.quant import QuantConfig, native, quantize_model
from minicpmv.quant.linear import Int4Linear
from minicpmv.quant.moe import GroupedMoE
from minicpmv.quant.swiglu import SwiGLUFusedMLP

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"native kernels: {native.why_unavailable()}")

SHAPE = TINY_QWEN35 | dict(
    hidden_size=128,
    intermediate_size=256,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    vocab_size=300,
    # 16 experts, 4 a token: short prompts leave some experts without rows, long ones give some
    # more rows than the grouped call takes
    num_experts=16,
    experts_per_token=4,
    expert_intermediate_size=64,
    shared_expert_intermediate_size=96,
)


class Holder(torch.nn.Module):  # what quantize_model takes: .llm and .config.raw
    def __init__(self, llm):
        super().__init__()
        self.llm = llm
        self.config = type("Config", (), {"raw": {}})()


def quantized_llm(bits: int = 4, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    llm = LanguageModel(LLMConfig(**SHAPE))
    with torch.no_grad():
        for p in llm.parameters():
            p.copy_(torch.randn(p.shape) * 0.1)
    quantize_model(Holder(llm), QuantConfig(bits=bits, group_size=32))
    return llm


def mlp_calls(monkeypatch) -> list:
    """The input shapes of the MLPs' (experts') forward calls, counted at the class (a hook would
    turn the grouped call off)."""
    calls, forward = [], SwiGLUFusedMLP.forward
    monkeypatch.setattr(SwiGLUFusedMLP, "forward", lambda self, x: calls.append(x.shape) or forward(self, x))
    return calls


@pytest.mark.parametrize("tokens", [2, 9, 40])
def test_grouped_experts_give_the_models_moe_output_up_to_float32_rounding(tokens, monkeypatch):
    """Same integer products per expert; only silu's evaluation (ours against ATen's) differs."""
    moe = quantized_llm().model.layers[0].mlp
    assert type(moe) is GroupedMoE
    x = torch.randn(1, tokens, SHAPE["hidden_size"])
    calls = mlp_calls(monkeypatch)
    with torch.inference_mode():
        grouped = moe(x)
        assert len(calls) == 1  # the shared expert only: every routed expert was grouped
        reference = SparseMoE.forward(moe, x)
    torch.testing.assert_close(grouped, reference, rtol=0, atol=1e-5 * reference.abs().max().item())


def test_experts_with_many_rows_take_their_own_layers(monkeypatch):
    """From the int8 GEMM's row count on, an expert's rows go through its own layers (the GEMM is as
    fast there); the rest stay grouped, and the sum is the same."""
    moe = quantized_llm().model.layers[0].mlp
    monkeypatch.setattr(Int4Linear, "igemm_min_rows", lambda self: 12)
    x = torch.randn(1, 40, SHAPE["hidden_size"])  # 160 pairs over 16 experts: ~10 rows each
    with torch.inference_mode():
        _, _, counts = moe.route(x[0])
        many = int((counts >= 12).sum())
        assert 0 < many < int((counts > 0).sum())
        calls = mlp_calls(monkeypatch)
        grouped = moe(x)
        assert len(calls) == 1 + many
        reference = SparseMoE.forward(moe, x)
    torch.testing.assert_close(grouped, reference, rtol=0, atol=1e-5 * reference.abs().max().item())


def test_the_models_path_where_the_grouped_call_does_not_apply(monkeypatch):
    int8 = quantized_llm(bits=8).model.layers[0].mlp  # int8 experts: not int4 tiles
    x = torch.randn(1, 9, SHAPE["hidden_size"])
    with torch.inference_mode():
        assert torch.equal(int8(x), SparseMoE.forward(int8, x))
    moe = quantized_llm().model.layers[0].mlp
    seen = []
    handle = moe.experts[3].up_proj.register_forward_hook(lambda *args: seen.append(1))
    with torch.inference_mode():
        hooked = moe(torch.randn(1, 40, SHAPE["hidden_size"]))  # 40 tokens reach every expert
    assert seen and hooked.shape == (1, 40, SHAPE["hidden_size"])  # a hook sees its layer's calls
    handle.remove()
    calls = mlp_calls(monkeypatch)
    x = torch.randn(1, 9, SHAPE["hidden_size"], requires_grad=True)
    moe(x).sum().backward()  # autograd: the model's path, whose products are differentiable
    assert len(calls) > 1 and x.grad is not None


def test_the_grouped_call_follows_new_weights():
    """Loading other weights rebinds the experts' native calls; the descriptors are rebuilt."""
    llm = quantized_llm()
    moe = llm.model.layers[0].mlp
    x = torch.randn(1, 9, SHAPE["hidden_size"])
    with torch.inference_mode():
        before = moe(x)
        llm.load_state_dict(quantized_llm(seed=1).state_dict())
        after, reference = moe(x), SparseMoE.forward(moe, x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference, rtol=0, atol=1e-5 * reference.abs().max().item())


def test_a_prompt_through_the_whole_model_keeps_its_logits():
    llm = quantized_llm()
    ids = torch.arange(30)[None]
    with torch.inference_mode():
        grouped = llm(llm.embed(ids), cache=llm.new_cache(1, 32))
        for layer in llm.model.layers:
            layer.mlp.__class__ = SparseMoE
        reference = llm(llm.embed(ids), cache=llm.new_cache(1, 32))
    torch.testing.assert_close(grouped, reference, rtol=0, atol=1e-4 * reference.abs().max().item())
