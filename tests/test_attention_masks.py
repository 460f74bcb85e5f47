"""Which mask the LLM's attention gets: a prompt with nothing cached and no padding takes SDPA's
is_causal (blocks.CAUSAL: the key blocks above the diagonal skipped), with the explicit causal
mask's results; a chunk after cached tokens, padded rows and single tokens keep theirs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_QWEN35

from minicpmv.model.blocks import rope_cos_sin
from minicpmv.model.llm import LanguageModel, LLMConfig, attention_bias

FAMILIES = {
    "qwen2": dict(family="qwen2"),
    "qwen3_5 (gated attention between DeltaNet layers)": TINY_QWEN35,
}


def tiny_llm(**shape) -> LanguageModel:
    cfg = LLMConfig(
        hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2, vocab_size=100, **shape
    )
    torch.manual_seed(0)
    return LanguageModel(cfg).eval()


def sdpa_calls(monkeypatch) -> list:
    """(is_causal, the mask given) of every SDPA call, in order."""
    calls, sdpa = [], F.scaled_dot_product_attention

    def recorded(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((is_causal, attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recorded)
    return calls


@pytest.mark.parametrize("family", list(FAMILIES))
@torch.inference_mode()
def test_a_fresh_unpadded_prompt_takes_is_causal_with_the_explicit_masks_logits(family, monkeypatch):
    llm = tiny_llm(**FAMILIES[family])
    embeds = llm.embed(torch.randint(0, 100, (1, 9)))
    calls = sdpa_calls(monkeypatch)
    for attention_mask in (None, torch.ones(1, 9, dtype=torch.long)):
        fast = llm(embeds, attention_mask=attention_mask)
        assert calls and all(causal and mask is None for causal, mask in calls)
        calls.clear()
    cos, sin = rope_cos_sin(torch.arange(9)[None], llm.cfg, embeds.dtype)
    explicit = llm.run_layers(embeds, cos, sin, attention_bias(None, 1, 9, 0, embeds.dtype, "cpu"), None, False)
    assert calls and not any(causal for causal, _ in calls)
    torch.testing.assert_close(fast, explicit, atol=1e-6, rtol=1e-5)


@torch.inference_mode()
def test_chunks_after_cached_tokens_and_padded_rows_keep_an_explicit_mask(monkeypatch):
    """is_causal aligns the diagonal at the top left: after cached tokens a chunk's queries sit
    lower, so they need the explicit mask; a prompt fed in two chunks gives the whole prompt's logits."""
    llm = tiny_llm(family="qwen2")
    embeds = llm.embed(torch.randint(0, 100, (1, 9)))
    whole = llm(embeds, cache=llm.new_cache(1, 9))
    calls = sdpa_calls(monkeypatch)
    cache = llm.new_cache(1, 9)
    first = llm(embeds[:, :5], cache=cache)
    assert all(causal for causal, _ in calls)
    calls.clear()
    second = llm(embeds[:, 5:], cache=cache)
    assert calls and all(not causal and mask is not None for causal, mask in calls)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, atol=1e-5, rtol=1e-5)
    calls.clear()
    llm(embeds.expand(2, -1, -1), attention_mask=torch.tensor([[0] * 2 + [1] * 7, [1] * 9]))  # left padding
    assert calls and all(not causal and mask is not None for causal, mask in calls)
