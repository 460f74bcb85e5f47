"""For every case of the five tiny checkpoints, the native model reproduces the official
activations: vision tower (valid rows), resampler, inputs_embeds and logits within atol 1e-4
in float32; greedy ids identical, per-step logits within 1e-4 with the KV cache.

What a case's file holds decides what is compared: the timm tower (2.0, 1.0) stores its forward
features and resampled position table, 1.0 also the resampler's upsampled key table; 4.5 keeps
logits only at the non-image positions (`logits_positions`) and has no inputs_embeds."""

import pytest
import torch
from conftest import case_options, golden_cases
from safetensors.torch import load_file
from test_processor_golden import load_case

from minicpmv import load
from minicpmv.generation import GenerationConfig, generate, padded_position_ids
from minicpmv.model.minicpmv import pad_strips, strip_to_image

ATOL = 1e-4
CASES = golden_cases()
_MODELS = {}


def chat_model(checkpoint):
    if checkpoint not in _MODELS:
        _MODELS[checkpoint] = load(checkpoint, dtype="float32", device="cpu", vision_dtype="float32")  # exact parity
    return _MODELS[checkpoint]


def prepare(version, case_dir):
    processor, batch, expected_json = load_case(version, case_dir)
    model = chat_model(case_dir.parent / "checkpoint").model
    inputs = processor(batch, **case_options(expected_json))
    return model, inputs, load_file(case_dir / "expected.safetensors"), expected_json


def close(actual, expected):
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual.float(), expected.float(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("version,case_dir", CASES, ids=[f"{v}-{c.name}" for v, c in CASES])
@torch.inference_mode()
def test_activations_match_official(version, case_dir):
    model, inputs, expected, _ = prepare(version, case_dir)
    crops = [c for sample in inputs.pixel_values for c in sample]
    sizes = torch.cat(inputs.tgt_sizes).long()
    if "vpm_forward_features.0" in expected:  # timm tower: one crop at a time
        for i, (crop, (rows, cols)) in enumerate(zip(crops, sizes.tolist())):
            close(model.vpm.resampled_pos_embed(rows, cols), expected[f"vpm_resampled_pos_embed.{i}"])
            close(model.vpm(strip_to_image(crop, rows, cols)[None])[0], expected[f"vpm_forward_features.{i}"])
    elif "vpm_last_hidden_state" in expected:
        hidden = model.vpm(pad_strips(crops), sizes)
        position_ids, _ = model.vpm.position_ids_and_mask(sizes, hidden.shape[1])
        assert torch.equal(position_ids, expected["vision_position_ids"])
        for i, (rows, cols) in enumerate(sizes.tolist()):
            close(hidden[i, : rows * cols], expected["vpm_last_hidden_state"][i, : rows * cols])
    if "resampler_key_pos_embed" in expected:  # 1.0 quirk: the stored 8x8 table, upsampled to 32x32
        close(model.resampler.key_position(32, 32), expected["resampler_key_pos_embed"])
    features = model.features_per_sample(inputs.pixel_values, inputs.tgt_sizes, inputs.time_units)
    close(torch.cat(features), expected["resampler_out"])
    embeds = model.embed_inputs(inputs.input_ids, features, inputs.image_bound)
    valid = inputs.attention_mask.bool()
    if "inputs_embeds" in expected:  # 1.0 / 2.0 quirk: text rows x scale_emb, image rows unscaled
        close(embeds[valid], expected["inputs_embeds"][valid])
    position_ids = expected.get("position_ids")
    if position_ids is not None:
        assert torch.equal(padded_position_ids(inputs.attention_mask), position_ids)
    logits = model.llm(embeds, position_ids, inputs.attention_mask)
    one_call = model(
        inputs.input_ids,
        inputs.pixel_values,
        inputs.tgt_sizes,
        inputs.image_bound,
        inputs.attention_mask,
        position_ids,
        time_units=inputs.time_units,
    )
    if "logits_positions" in expected:  # 4.5 stores the non-image positions only
        rows = torch.arange(len(valid))[:, None]
        close(logits[rows, expected["logits_positions"]], expected["logits"])
        close(one_call[rows, expected["logits_positions"]], expected["logits"])
    else:
        close(logits[valid], expected["logits"][valid])
        close(one_call[valid], expected["logits"][valid])


@pytest.mark.parametrize("version,case_dir", CASES, ids=[f"{v}-{c.name}" for v, c in CASES])
def test_greedy_decoding_with_kv_cache_matches_official(version, case_dir):
    model, inputs, expected, expected_json = prepare(version, case_dir)
    chat = chat_model(case_dir.parent / "checkpoint")
    with torch.inference_mode():
        features = model.features_per_sample(inputs.pixel_values, inputs.tgt_sizes, inputs.time_units)
        embeds = model.embed_inputs(inputs.input_ids, features, inputs.image_bound)
    config = GenerationConfig(max_new_tokens=8, stop_ids=chat.stop_ids)
    out = generate(model.llm, embeds, inputs.attention_mask, config, keep_step_logits=True)
    assert out.token_ids == expected["greedy_ids"].tolist()
    close(torch.stack(out.step_logits, dim=1), expected["greedy_step_logits"])
    official = expected_json["official_chat_outputs"]
    key = "chat_batched_greedy_num_beams1_rep1.0" if "case_batch" in str(case_dir) else "chat_greedy_num_beams1_rep1.0"
    _, batch, _ = load_case(version, case_dir)
    # through the chat API: 4.5 thinking answers keep the "<think>\n" the prompt ends with
    texts = [g.text for g in chat.generate_batch(batch, max_new_tokens=8, **case_options(expected_json))]
    assert texts == (official[key] if isinstance(official[key], list) else [official[key]])


@pytest.mark.parametrize("version,case_dir", CASES, ids=[f"{v}-{c.name}" for v, c in CASES])
def test_precise_preset_beam_search_matches_official(version, case_dir):
    _, batch, expected_json = load_case(version, case_dir)
    expected = load_file(case_dir / "expected.safetensors")
    chat = chat_model(case_dir.parent / "checkpoint")
    results = chat.generate_batch(batch, preset="precise", max_new_tokens=8, **case_options(expected_json))
    assert [r.token_ids for r in results] == expected["beam3_rep1.2_ids"].tolist()


def test_chat_api_answers_like_the_official_chat():
    from conftest import REFERENCE, TINY

    chat = chat_model(TINY["2.6"] / "checkpoint")
    question = [{"role": "user", "content": "What is in the image?"}]
    result = chat.generate(question, image=REFERENCE / "images" / "img_b_640x448.png", max_new_tokens=8)
    assert result.token_ids == [137, 279, 209, 186, 131, 50, 185, 279]
    assert result.text == chat.chat(question, image=REFERENCE / "images" / "img_b_640x448.png", max_new_tokens=8)
    as_string = chat.generate(question, image=str(REFERENCE / "images" / "img_b_640x448.png"), max_new_tokens=8)
    assert as_string.token_ids == result.token_ids  # a str image is a path, not text
    assert len(result.prompt_token_ids) == 260
