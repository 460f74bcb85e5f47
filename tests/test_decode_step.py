"""The native decode step (quant/decode_step.py, kernels/decoder.c and hybrid.c): one new token of one sequence
through every layer in one call must give the layer-by-layer path's logits up to float32
rounding, for each decoder family it takes, and step aside wherever it does not apply."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import TINY_QWEN35

from minicpmv.model.llm import LanguageModel, LLMConfig
from minicpmv.quant import QuantConfig, native, quantize_model
from minicpmv.quant.decode_step import HybridDecodeStep, NativeStep

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"native kernels: {native.why_unavailable()}")

FAMILIES = {
    "qwen2 (q/k/v bias, grouped kv heads)": dict(family="qwen2", num_kv_heads=2),
    "llama (one kv head per head)": dict(family="llama", num_kv_heads=4, attention_bias=False),
    "qwen3 (per-head q/k RMSNorm, head_dim apart from hidden)": dict(
        family="qwen3", num_kv_heads=2, attention_bias=False, qk_norm=True, explicit_head_dim=48
    ),
    "minicpm (scaled embeddings, residuals and logits)": dict(
        family="minicpm", num_kv_heads=4, attention_bias=False, scale_emb=12.0, scale_depth=1.4, dim_model_base=64
    ),
    # 4.6's LLM: DeltaNet layers around a gated attention layer with rotary on a quarter of each
    # head; each key head of the recurrence serves two value heads
    "qwen3_5 (gated attention and Gated DeltaNet layers)": TINY_QWEN35
    | dict(num_kv_heads=2, layer_types=("linear_attention", "full_attention", "linear_attention")),
}
# 4.7's MoE variant: the same layers with a mixture of experts for each MLP; three of eight experts
# per token, so that the chosen ones come in any order and differ from token to token
FAMILIES["qwen3_5 MoE (8 experts, top 3, a shared expert)"] = FAMILIES[
    "qwen3_5 (gated attention and Gated DeltaNet layers)"
] | dict(num_experts=8, experts_per_token=3, expert_intermediate_size=64, shared_expert_intermediate_size=96)


class Holder(torch.nn.Module):  # what quantize_model takes: .llm and .config.raw
    def __init__(self, llm):
        super().__init__()
        self.llm = llm
        self.config = type("Config", (), {"raw": {}})()


def quantized_llm(bits: int, **shape) -> LanguageModel:
    cfg = LLMConfig(hidden_size=128, intermediate_size=256, num_layers=3, num_heads=4, vocab_size=300, **shape)
    torch.manual_seed(0)
    llm = LanguageModel(cfg)
    with torch.no_grad():
        for p in llm.parameters():
            p.copy_(torch.randn(p.shape) * 0.1)
    quantize_model(Holder(llm), QuantConfig(bits=bits, group_size=32))
    return llm


class Counting:
    """The fallback, counting the calls that reach it."""

    def __init__(self, fallback):
        self.fallback, self.calls = fallback, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fallback(*args, **kwargs)


@torch.inference_mode()
def decode(llm, steps: int = 6, prompt: int = 5, capacity: int = 20) -> torch.Tensor:
    cache = llm.new_cache(1, capacity)
    llm(llm.embed(torch.arange(prompt)[None]), cache=cache, last_only=True)
    token, logits = torch.tensor([[7]]), []
    for _ in range(steps):
        logits.append(llm(llm.embed(token), cache=cache))
        token = logits[-1][:, -1].argmax(-1, keepdim=True)
    return torch.cat(logits, 1)


@pytest.mark.parametrize("bits", [4, 8, 16])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_native_call_per_token_gives_the_layer_by_layer_logits(family, bits):
    llm = quantized_llm(bits, **FAMILIES[family])
    step = llm.run_layers
    assert isinstance(step, NativeStep)
    step.fallback = counting = Counting(step.fallback)
    native_logits = decode(llm)
    assert counting.calls == 1  # the prompt only: every new token took the native call
    llm.run_layers = counting.fallback
    reference = decode(llm)
    # bf16 weights: float32 rounding only. int4/int8: the linears quantize their input to int8, and
    # an input one ulp apart can round one activation to the next step (seen: 0.2% of the logits'
    # range on this model)
    relative = 2e-5 if bits == 16 else 1e-2
    torch.testing.assert_close(native_logits, reference, atol=relative * reference.abs().max().item(), rtol=0)
    assert torch.equal(native_logits.argmax(-1), reference.argmax(-1))


def test_the_native_step_steps_aside_where_it_does_not_apply():
    llm = quantized_llm(4, family="qwen2", num_kv_heads=2)
    step = llm.run_layers
    step.fallback = counting = Counting(step.fallback)
    with torch.inference_mode():
        cache = llm.new_cache(2, 8)  # two sequences at once
        llm(llm.embed(torch.tensor([[1, 2], [3, 4]])), cache=cache)
        llm(llm.embed(torch.tensor([[5], [6]])), cache=cache)
        cache = llm.new_cache(1, 8)
        llm(llm.embed(torch.tensor([[1, 2]])), cache=cache)
        llm(llm.embed(torch.tensor([[3]])), attention_mask=torch.tensor([[0, 1, 1]]), cache=cache)  # padded
    assert counting.calls == 4
    assert torch.is_grad_enabled()
    llm(llm.embed(torch.tensor([[1]])), cache=llm.new_cache(1, 4))  # autograd on: the model's path
    assert counting.calls == 5
    with torch.inference_mode(), pytest.raises(ValueError, match="KV cache holds 2 tokens"):
        cache = llm.new_cache(1, 2)
        llm(llm.embed(torch.tensor([[1, 2]])), cache=cache)
        llm(llm.embed(torch.tensor([[3]])), cache=cache)  # full: the model's own error


def test_the_native_step_follows_new_weights():
    """Loading other weights rebinds the layers' native calls; the step rebuilds from them."""
    llm = quantized_llm(4, family="qwen2", num_kv_heads=2)
    before = decode(llm)
    other = quantized_llm(4, family="qwen2", num_kv_heads=2)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1.0)
        for name, buffer in other.named_buffers():
            if name.endswith("zeros"):
                buffer.mul_(-1.0)
    llm.load_state_dict(other.state_dict())
    after = decode(llm)
    llm.run_layers = llm.run_layers.fallback
    torch.testing.assert_close(after, decode(llm), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(after, before, atol=1e-3)


def test_the_hybrid_step_follows_a_changed_norm_and_router():
    """Its zero-centred norms (1 + w) and transposed conv are copies: changing the weight in place
    must rebuild them. A MoE router's rows are read in place: an edited router routes anew."""
    llm = quantized_llm(4, **FAMILIES["qwen3_5 (gated attention and Gated DeltaNet layers)"])
    assert isinstance(llm.run_layers, HybridDecodeStep)
    decode(llm)
    with torch.no_grad():
        llm.model.layers[0].input_layernorm.weight.add_(0.5)
        llm.model.layers[2].linear_attn.conv1d.weight.mul_(-1.0)
    after = decode(llm)
    llm.run_layers = llm.run_layers.fallback
    reference = decode(llm)
    torch.testing.assert_close(after, reference, atol=1e-2 * reference.abs().max().item(), rtol=0)

    # bf16 weights: float32 rounding only, so that a tight tolerance tells a wrong expert apart
    moe = quantized_llm(16, **FAMILIES["qwen3_5 MoE (8 experts, top 3, a shared expert)"])
    before = decode(moe)
    with torch.no_grad():
        for layer in moe.model.layers:
            layer.mlp.gate.weight.mul_(-1.0)  # the least likely experts now win
    after = decode(moe)
    moe.run_layers = moe.run_layers.fallback
    reference = decode(moe)
    torch.testing.assert_close(after, reference, atol=2e-5 * reference.abs().max().item(), rtol=0)
    assert not torch.allclose(after, before, atol=1e-2)


@torch.inference_mode()
def test_the_hybrid_step_takes_4_7s_interleaved_m_rope_positions():
    """4.7 gives each token (T, H, W) position rows whose frequencies interleave (canvas M-RoPE):
    the native step rotates by the cos/sin the model computed from them, as the model does."""
    shape = FAMILIES["qwen3_5 (gated attention and Gated DeltaNet layers)"] | dict(mrope_section=(2, 1, 1))
    llm = quantized_llm(16, **shape)
    canvas = torch.stack([torch.arange(6), torch.arange(6) * 3 % 5, torch.arange(6) * 2 % 7])[:, None]  # (3, 1, T)
    text = torch.arange(6).expand(3, 1, 6)  # equal rows: plain RoPE

    def run(step, rows) -> torch.Tensor:
        llm.run_layers = step
        cache = llm.new_cache(1, 16)
        llm(llm.embed(torch.arange(5)[None]), position_ids=rows[..., :5], cache=cache)
        return llm(llm.embed(torch.tensor([[9]])), position_ids=rows[..., 5:], cache=cache)

    native_step = llm.run_layers
    native_step.fallback = counting = Counting(native_step.fallback)
    native_logits = run(native_step, canvas)
    assert counting.calls == 1
    reference = run(counting.fallback, canvas)
    torch.testing.assert_close(native_logits, reference, atol=2e-5 * reference.abs().max().item(), rtol=0)
    assert not torch.allclose(run(native_step, text), native_logits, atol=1e-4)  # the rows mattered


def test_the_bindings_are_checked_once_per_generation():
    """Checking every linear's binding costs 14 ms a token on 4.7's MoE (~8000 linears): the
    full check runs at a generation's first native token; the next tokens of that cache skip it,
    and another cache (the next generation) checks again."""
    llm = quantized_llm(4, **FAMILIES["qwen3_5 MoE (8 experts, top 3, a shared expert)"])
    step, checks = llm.run_layers, []
    full_check = step._ready
    step._ready = lambda: checks.append(1) or full_check()
    decode(llm, steps=5)
    assert len(checks) == 1
    decode(llm, steps=5)
    assert len(checks) == 2


@pytest.mark.parametrize(
    "family", ["qwen2 (q/k/v bias, grouped kv heads)", "qwen3_5 MoE (8 experts, top 3, a shared expert)"]
)
def test_a_copy_of_a_model_that_decoded_decodes_alike(family):
    """The step's descriptors (and the grouped experts') hold this process's pointers to the
    original's tensors: deepcopy and pickle leave them behind, and the copy rebuilds its own."""
    llm = quantized_llm(4, **FAMILIES[family])
    expected = decode(llm)
    buffer = io.BytesIO()
    torch.save(llm, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(llm), torch.load(buffer, weights_only=False)):
        step = copied.run_layers
        assert isinstance(step, NativeStep) and step.llm is copied
        step.fallback = counting = Counting(step.fallback)
        assert torch.equal(decode(copied), expected)
        assert counting.calls == 1  # the prompt only: the copy's tokens took its own native step
