"""One named test per 4.6 / 4.7 quirk (the fixtures' README, "Quirks a re-implementation is likely
to get wrong"): each pins the rule on its own, so a change that breaks one says which."""

from __future__ import annotations

import hashlib
from unittest.mock import patch

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REFERENCE, load_json
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from test_v46_parity import chat_for, messages_of

from minicpmv.generation import GenerationConfig, generate
from minicpmv.model.blocks import rope_cos_sin as mrope_cos_sin
from minicpmv.model.checkpoint import load_model, save_model
from minicpmv.model.config import LLMConfig, VisionConfig
from minicpmv.model.merger import DownsampleMLP
from minicpmv.model.positions import navit_position_buckets
from minicpmv.model.qwen35 import GatedAttention, ZeroCentredRMSNorm, delta_rule_chunked, delta_rule_step
from minicpmv.model.vision import WindowMerger
from minicpmv.processing.canvas import ImageLayout, canvas_positions
from minicpmv.processing.config import ProcessorConfig
from minicpmv.processing.pixels import crop_images, normalize, patchify

TINY46 = REFERENCE / "minicpmv46_tiny"


def config_46(mode: str = "16x") -> ProcessorConfig:
    config = ProcessorConfig.defaults("4.6")
    config.downsample_mode = mode
    return config


def test_quirk_grid_is_rows_cols_and_ties_go_to_more_rows():
    # 449x449: one slice too many for one crop, 1x2 and 2x1 equally far from square
    plan = config_46().plan((449, 449))
    cols, rows = plan.grid
    assert (rows, cols) == (2, 1)
    assert plan.tgt_sizes[1] == (24, 44)  # (rows, cols) of patches of a 616x336 slice


def test_quirk_sides_round_to_56_in_16x_and_28_in_4x():
    overview_16x = config_46("16x").plan((900, 300)).tgt_sizes[0]
    overview_4x = config_46("4x").plan((900, 300)).tgt_sizes[0]
    assert overview_16x == (20, 56) and overview_4x == (18, 56)  # so 4x is not 4 times 16x's tokens
    assert config_46("16x").crop_tokens(overview_16x) == 70 and config_46("4x").crop_tokens(overview_4x) == 252


def test_quirk_unsliced_images_are_upscaled():
    assert config_46().plan((120, 80)).source_size == (560, 392)


def test_quirk_torchvision_backend_crops_are_exact():
    """Antialiased bicubic on the uint8 tensor and (k - 127.5) / 127.5: every crop of the
    fixtures byte for byte, and its float32 hash."""
    sets = load_json(REFERENCE / "crops" / "crops.json")["sets"]
    checked = 0
    for name, record in sets.items():
        if not name.startswith("v46_"):
            continue
        picture, mode = name.rsplit(".", 1)
        image = Image.open(REFERENCE / "images" / f"{picture}.png").convert("RGB")
        crops = crop_images(image, config_46(mode).plan(image.size), backend="torch")
        assert len(crops) == len(record["files"])
        for crop, file, digest in zip(crops, record["files"], record["crop_float32_sha256"]):
            assert np.array_equal(crop, np.asarray(Image.open(REFERENCE / "crops" / file).convert("RGB"))), file
            strip = patchify(normalize(crop, backend="torch"), 14)
            assert hashlib.sha256(np.ascontiguousarray(strip).tobytes()).hexdigest() == digest, file
            checked += 1
    assert checked == 16


def test_quirk_pil_resize_differs_from_the_torchvision_backend():
    image = Image.open(REFERENCE / "images" / "v46_a_900x300.png").convert("RGB")
    plan = config_46().plan(image.size)
    pil, torch_backend = crop_images(image, plan, "pil")[0], crop_images(image, plan, "torch")[0]
    difference = np.abs(pil.astype(int) - torch_backend.astype(int))
    assert 0 < difference.max() <= 1  # one level on some pixels, as the README says


def test_quirk_image_id_is_per_sample():
    chat = chat_for(TINY46 / "case_multi_16x")
    chat.processor.config.downsample_mode = "16x"
    multi = messages_of(TINY46 / "case_multi_16x")
    inputs = chat.processor([multi, multi], thinking=False)
    for row in inputs.input_ids:
        text = chat.processor.tokenizer.decode(row.tolist())
        assert text.count("<image_id>0</image_id>") == 1 and text.count("<image_id>1</image_id>") == 1


def test_quirk_position_buckets_are_fractions_of_n():
    """4.6 buckets arange(n)/n; 2.6's arange(0, 1-1e-6, 1/n) lands elsewhere for some n."""
    table = load_json(REFERENCE / "navit_position_ids_46.json")
    for n, buckets in table["buckets"].items():
        assert navit_position_buckets(int(n), 70, "fraction").tolist() == buckets, n
    differs = [
        n
        for n in range(1, 141)
        if not torch.equal(navit_position_buckets(n, 70, "fraction"), navit_position_buckets(n, 70, "arange"))
    ]
    assert differs == table["n_where_4_6_differs_from_2_6"]


def window_merger() -> WindowMerger:
    torch.manual_seed(0)
    merger = WindowMerger(VisionConfig(hidden_size=8, intermediate_size=16, num_heads=2))
    for p in merger.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return merger


@torch.no_grad()
def test_quirk_window_merger_adds_the_mean_of_each_window():
    merger = window_merger()
    merger.linear_2.weight.zero_(), merger.linear_2.bias.zero_()  # the MLP branch off
    merger.self_attn.out_proj.weight.zero_(), merger.self_attn.out_proj.bias.zero_()  # attention adds 0
    x = torch.randn(1, 16, 8)  # one 4x4 crop
    out = merger(x, torch.tensor([[4, 4]]))[0]
    # window (0, 0) = patches 0, 1, 4, 5 of the row-major grid: their plain (un-normalised) mean
    torch.testing.assert_close(out[0], x[0, [0, 1, 4, 5]].mean(0))
    torch.testing.assert_close(out[3], x[0, [10, 11, 14, 15]].mean(0))


@torch.no_grad()
def test_quirk_window_merger_mlp_uses_tanh_gelu_and_merger_exact_gelu():
    merger = window_merger()
    merger.self_attn.out_proj.weight.zero_(), merger.self_attn.out_proj.bias.zero_()
    x = torch.randn(1, 4, 8)
    windows = x[0, [0, 1, 2, 3]].reshape(1, 32)
    hidden = merger.linear_1(merger.pre_norm(windows))
    expected = merger.linear_2(F.gelu(hidden, approximate="tanh")) + x[0].mean(0)
    torch.testing.assert_close(merger(x, torch.tensor([[2, 2]]))[0], expected)
    assert not torch.allclose(merger.linear_2(F.gelu(hidden)), merger.linear_2(F.gelu(hidden, approximate="tanh")))
    mlp = DownsampleMLP(8, 4)
    torch.testing.assert_close(mlp(windows), mlp.linear_2(F.gelu(mlp.linear_1(mlp.pre_norm(windows)))))


def test_quirk_rmsnorm_is_zero_centred():
    norm = ZeroCentredRMSNorm(4, 1e-6)
    x = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    plain = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(norm(x), plain)  # weight 0 scales by 1
    with torch.no_grad():
        norm.weight.fill_(0.5)
    torch.testing.assert_close(norm(x), plain * 1.5)


def tiny_llm_config(**changes) -> LLMConfig:
    values = dict(
        family="qwen3_5", vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
        num_kv_heads=1, explicit_head_dim=8, qk_norm=True, attention_bias=False, partial_rotary_factor=0.5,
        rope_theta=1e4,
    )  # fmt: skip
    return LLMConfig(**{**values, **changes})


@torch.no_grad()
def test_quirk_query_and_gate_are_interleaved_per_head():
    torch.manual_seed(0)
    cfg = tiny_llm_config(rope_theta=1e4)
    attention = GatedAttention(cfg)
    x = torch.randn(1, 3, 16)
    cos, sin = mrope_cos_sin(torch.arange(3)[None], cfg, x.dtype)
    out = attention(x, cos, sin, None, None, 0)
    # q_proj rows per head: [query (8), gate (8)]; a per-module split [all queries, all gates]
    # would pair head 0's query with head 1's gate rows
    swapped = GatedAttention(cfg)
    swapped.load_state_dict(attention.state_dict())
    rows = attention.q_proj.weight.view(2, 2, 8, 16)  # (head, query|gate, hd, in)
    swapped.q_proj.weight.copy_(rows.transpose(0, 1).reshape(32, 16))
    assert not torch.allclose(swapped(x, cos, sin, None, None, 0), out)
    # sigmoid(gate) multiplies the attention output before o_proj: zero gate rows halve it
    with patch("minicpmv.model.qwen35.torch.sigmoid", torch.ones_like):
        ungated = attention(x, cos, sin, None, None, 0)
    attention.q_proj.weight.view(2, 2, 8, 16)[:, 1].zero_()
    torch.testing.assert_close(attention(x, cos, sin, None, None, 0), 0.5 * ungated)


def test_quirk_mrope_is_partial_and_interleaved():
    cfg = tiny_llm_config(explicit_head_dim=32, partial_rotary_factor=0.25, mrope_section=(2, 1, 1))
    rows = torch.tensor([[[5]], [[7]], [[11]]])  # (3, B=1, T=1): T=5, H=7, W=11
    cos, _ = mrope_cos_sin(rows, cfg, torch.float32)
    assert cos.shape[-1] == 8  # a quarter of the head turns
    inv_freq = 1.0 / (1e4 ** (torch.arange(0, 8, 2).float() / 8))
    expected_rows = torch.tensor([5.0, 7.0, 11.0, 5.0])  # frequency i: T, H (i%3==1), W (i%3==2), T
    torch.testing.assert_close(cos[0, 0, 0, :4], torch.cos(expected_rows * inv_freq))
    # equal rows (4.6: plain positions for all three) give plain RoPE
    plain, _ = mrope_cos_sin(torch.tensor([[5]]), cfg, torch.float32)
    torch.testing.assert_close(plain[0, 0, 0, :4], torch.cos(5.0 * inv_freq))


def random_delta_inputs(length: int, requires_grad: bool = False):
    torch.manual_seed(0)
    heads, dk, dv = 2, 8, 6
    q = F.normalize(torch.randn(1, heads, length, dk), dim=-1) * dk**-0.5
    k = F.normalize(torch.randn(1, heads, length, dk), dim=-1)
    v = torch.randn(1, heads, length, dv)
    g = -F.softplus(torch.randn(1, heads, length))
    beta = torch.sigmoid(torch.randn(1, heads, length))
    state = torch.randn(1, heads, dk, dv) * 0.1
    tensors = [t.double().requires_grad_(requires_grad) for t in (q, k, v, g, beta, state)]
    return tensors


@pytest.mark.parametrize("length", [150, 64, 17, 2])
def test_quirk_deltanet_chunked_form_equals_recurrent_form(length):
    """Prefill (chunks of 64, the last padded; a shorter prompt one chunk of its own length) and
    decoding (token by token) are one recurrence: equal outputs and final states, from a given
    state, over several chunks and a partial one, one whole chunk, and short prompts."""
    q, k, v, g, beta, state = random_delta_inputs(length)
    out_chunked, state_chunked = delta_rule_chunked(q, k, v, g, beta, state)
    out_step, state_step = delta_rule_step(q, k, v, g, beta, state)
    torch.testing.assert_close(out_chunked, out_step, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(state_chunked, state_step, atol=1e-10, rtol=1e-8)
    # a first prompt: no state before it (one chunk of its own takes a shorter way)
    out_chunked, state_chunked = delta_rule_chunked(q, k, v, g, beta)
    out_step, state_step = delta_rule_step(q, k, v, g, beta)
    torch.testing.assert_close(out_chunked, out_step, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(state_chunked, state_step, atol=1e-10, rtol=1e-8)


def test_quirk_deltanet_chunked_gradients_equal_recurrent_gradients():
    """Training uses the chunked form: its gradients are those of the recurrence."""
    grads = []
    for rule in (delta_rule_chunked, delta_rule_step):
        tensors = random_delta_inputs(70, requires_grad=True)
        out, final = rule(*tensors)
        (out.square().sum() + final.sum()).backward()
        grads.append([t.grad for t in tensors])
    for chunked, step in zip(*grads):
        torch.testing.assert_close(chunked, step, atol=1e-9, rtol=1e-7)


def test_quirk_embeddings_are_tied_and_saved_without_a_head(tmp_path):
    with safe_open(str(TINY46 / "checkpoint" / "model.safetensors"), "pt") as f:
        assert not any("lm_head" in name for name in f.keys())
    model = load_model(TINY46 / "checkpoint")
    assert model.llm.lm_head.weight is model.llm.model.embed_tokens.weight
    save_model(model, tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    original = load_file(TINY46 / "checkpoint" / "model.safetensors")
    assert set(saved) == set(original)  # official names, no lm_head.weight
    again = load_model(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_quirk_canvas_thumbnail_rounds_half_to_even():
    """An 11-row thumbnail over a 16-row canvas: linspace(0, 15, 11) has .5 values, which torch
    rounds to even (1.5 -> 2, 4.5 -> 4, 10.5 -> 10)."""
    ids = [0] + [9] * 11 + [1] + [2] + [9] * 16 + [3] + [5]  # <image> 11x1 </image> <slice> 16x1 </slice> text
    layout = ImageLayout([(1, 12), (14, 30)], [(11, 1), (16, 1)], (1, 1))
    positions = canvas_positions(ids, layout and [layout], {0, 1, 2, 3}, 4)
    base = 0
    assert positions[1, 1:12].tolist() == [base + h for h in (0, 2, 3, 4, 6, 8, 9, 10, 12, 14, 15)]
    assert positions[:, 0].tolist() == [0, 0, 0]  # <image>: T = o, H = W = max(o - 1, 0)
    assert positions[:, 12].tolist() == [0, 16, 1]  # </image>: (o, o + canvas_h, o + canvas_w)
    assert positions[:, -1].tolist() == [17, 17, 17]  # text resumes at o + max(16, 1) + 1


@pytest.mark.parametrize("with_prompt", [True, False])
def test_quirk_repetition_penalty_counts_the_prompt(with_prompt):
    """transformers' own generate (4.6/4.7) penalises every token of input_ids, the prompt's
    included; penalising only new tokens changes this case's beams."""
    case = TINY46 / "case_single_4x"
    chat = chat_for(case)
    chat.processor.config.downsample_mode = chat.model.config.downsample_mode = "4x"
    inputs = chat.processor(messages_of(case), thinking=False)
    model = chat.model
    with torch.inference_mode():
        features = model.features_per_sample(inputs.pixel_values, inputs.tgt_sizes)
        embeds = model.embed_inputs(inputs.input_ids, features, inputs.image_bound)
    config = GenerationConfig(max_new_tokens=8, min_new_tokens=8, num_beams=3, repetition_penalty=1.2)
    history = [inputs.input_ids[0].tolist()] if with_prompt else None
    out = generate(model.llm, embeds, inputs.attention_mask, config, history=history)
    expected = load_file(case / "expected.safetensors")["beam3_rep1.2_ids"][0].tolist()
    assert (out.token_ids[0] == expected) is with_prompt
