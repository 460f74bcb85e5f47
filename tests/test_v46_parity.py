"""MiniCPM-V 4.6 / 4.7 against transformers' native implementation (tests/fixtures/reference:
minicpmv46_tiny, minicpmv47_tiny and its moe/, slicing46.json, navit_position_ids_46.json,
crops/): every case's prompt ids, pixels, target sizes, canvas positions, vision tower, window
merger, merger, logits, per-step logits, greedy and beam ids, from the API and the CLI. The
quirks each have a named test in test_v46_quirks.py."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import REFERENCE, load_json
from safetensors.torch import load_file

from minicpmv import load
from minicpmv.cli import main
from minicpmv.generation import GenerationConfig, generate
from minicpmv.model.minicpmv import pad_strips
from minicpmv.processing.config import ProcessorConfig
from minicpmv.processing.placeholders import image_placeholder
from minicpmv.processing.slicing import plan_slices

MODELS = [REFERENCE / "minicpmv46_tiny", REFERENCE / "minicpmv47_tiny", REFERENCE / "minicpmv47_tiny" / "moe"]
CASES = [case for model in MODELS for case in sorted(model.glob("case_*"))]
IDS = [f"{case.parent.relative_to(REFERENCE)}-{case.name}" for case in CASES]
LOGITS_ATOL = 1e-3  # the fixtures' README: tied embeddings make 4.6/4.7 logits larger
FEATURE_ATOL = 1e-5
_CHATS = {}


def chat_for(case):
    checkpoint = case.parent / "checkpoint"
    if checkpoint not in _CHATS:
        _CHATS[checkpoint] = load(checkpoint, dtype="float32", device="cpu", vision_dtype="float32")
    return _CHATS[checkpoint]


def messages_of(case):
    """messages.json with image paths made absolute (they are relative to the reference dir)."""
    raw = load_json(case / "messages.json")
    for message in raw:
        if isinstance(message["content"], list):
            for item in message["content"]:
                if item.get("type") == "image":
                    item["image"] = str(REFERENCE / item["image"])
    return raw


def prepare(case):
    """The chat model set to the case's downsample mode, its processed inputs and expectations."""
    expected_json = load_json(case / "expected.json")
    chat = chat_for(case)
    mode = expected_json.get("processor_kwargs", {}).get("downsample_mode", "16x")
    chat.processor.config.downsample_mode = chat.model.config.downsample_mode = mode
    thinking = expected_json["chat_template_kwargs"].get("enable_thinking")
    inputs = chat.processor(messages_of(case), thinking=thinking)
    return chat, inputs, load_file(case / "expected.safetensors"), expected_json, thinking


def slicing46_records():
    cases = load_json(REFERENCE / "slicing46.json")["cases"]
    return [(c["case_id"], c["width"], c["height"], mode, r) for c in cases for mode, r in c["modes"].items()]


def test_all_88_slicing_decisions():
    records = slicing46_records()
    assert len(records) == 88
    for case_id, width, height, mode, record in records:
        config = ProcessorConfig.defaults("4.6")
        config.downsample_mode = mode
        plan = config.plan((width, height), record["max_slice_nums"])
        rows_cols = None if plan.grid is None else [plan.grid[1], plan.grid[0]]
        assert rows_cols == record["best_grid_rows_cols"], case_id
        assert list(plan.source_size) == record["source_size"], case_id
        assert (list(plan.refine_size) if plan.refine_size else None) == record["refine_size"], case_id
        assert [list(s) for s in plan.slice_sizes] == record["slice_sizes"], case_id
        assert [list(t) for t in plan.tgt_sizes] == record["tgt_sizes"], case_id
        assert [config.crop_tokens(t) for t in plan.tgt_sizes] == record["tokens_per_crop"], case_id
        text = image_placeholder(plan, config, use_image_id=False)
        assert hashlib.sha256(text.encode()).hexdigest() == record["placeholder_sha256"], case_id


def test_slicing_with_the_multiple_of_the_older_versions_differs():
    """The 56/28 rounding is what makes the decisions: 2.6's rounding to 14 gets a third wrong."""
    wrong = sum(
        [list(t) for t in plan_slices((w, h), r["max_slice_nums"]).tgt_sizes] != r["tgt_sizes"]
        for _, w, h, _, r in slicing46_records()
    )
    assert wrong > 20


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_inputs_match_official(case):
    chat, inputs, expected, expected_json, _ = prepare(case)
    assert torch.equal(inputs.input_ids, expected["input_ids"])
    assert torch.equal(inputs.attention_mask, expected["attention_mask"])
    prompts = [p.replace("(<image>./</image>)", "<|image_pad|>") for p in inputs.prompts]
    assert prompts == expected_json["prompts_after_chat_template"]
    if "mrope_position_ids" in expected:  # 4.7's canvas layout
        assert torch.equal(inputs.position_ids, expected["mrope_position_ids"])
    else:
        assert inputs.position_ids is None
    crops = [crop for sample in inputs.pixel_values for crop in sample]
    if not crops:
        return
    assert torch.equal(torch.cat(inputs.tgt_sizes), expected["target_sizes"])
    packed = torch.cat(crops, dim=-1)[None].contiguous()  # the official NaViT packing, (1, 3, 14, sum)
    digest = hashlib.sha256(packed.numpy().tobytes()).hexdigest()
    assert digest == expected_json["pixels"]["pixel_values_float32_sha256"]


@pytest.mark.parametrize("case", [c for c in CASES if c.name != "case_text"], ids=[i for i in IDS if "text" not in i])
@torch.inference_mode()
def test_vision_and_merger_match_official(case):
    chat, inputs, expected, _, _ = prepare(case)
    model = chat.model
    crops = [crop for sample in inputs.pixel_values for crop in sample]
    sizes = torch.cat(inputs.tgt_sizes).long()
    ids, _ = model.vpm.position_ids_and_mask(sizes, int((sizes[:, 0] * sizes[:, 1]).max()))
    flat_ids = torch.cat([ids[i, : r * c] for i, (r, c) in enumerate(sizes.tolist())])
    assert torch.equal(flat_ids, expected["vision_position_ids"])
    merged = "vit_merger_out" in expected
    captured = {}
    if merged:
        hook = model.vpm.vit_merger.register_forward_hook(lambda m, args, out: captured.update(out=out))
    hidden = model.vpm(pad_strips(crops), sizes, merge=merged)
    if merged:
        hook.remove()
    side = 2 if merged else 1
    rows = [r * c // side**2 for r, c in sizes.tolist()]
    flat = torch.cat([hidden[i, :n] for i, n in enumerate(rows)])
    torch.testing.assert_close(flat, expected["vpm_last_hidden_state"][0], atol=FEATURE_ATOL, rtol=0)
    if merged:
        window_out = torch.cat([captured["out"][i, :n] for i, n in enumerate(rows)])
        torch.testing.assert_close(window_out, expected["vit_merger_out"][0], atol=FEATURE_ATOL, rtol=0)
    features = torch.cat(model.features_per_sample(inputs.pixel_values, inputs.tgt_sizes))
    torch.testing.assert_close(features, expected["merger_out"], atol=FEATURE_ATOL, rtol=0)
    assert model.crop_tokens(sizes) == expected["merger_tokens_per_crop"].tolist()


@pytest.mark.parametrize("case", CASES, ids=IDS)
@torch.inference_mode()
def test_logits_and_steps_match_official(case):
    chat, inputs, expected, _, _ = prepare(case)
    model = chat.model
    logits = model(
        inputs.input_ids,
        inputs.pixel_values,
        inputs.tgt_sizes,
        inputs.image_bound,
        inputs.attention_mask,
        position_ids=inputs.position_ids,
    )
    picked = logits[0, expected["logits_positions"][0]]
    torch.testing.assert_close(picked, expected["logits"][0], atol=LOGITS_ATOL, rtol=0)
    features = model.features_per_sample(inputs.pixel_values, inputs.tgt_sizes)
    embeds = model.embed_inputs(inputs.input_ids, features, inputs.image_bound)
    steps = expected["greedy_ids"].shape[1]
    config = GenerationConfig(max_new_tokens=steps, min_new_tokens=steps)
    out = generate(
        model.llm, embeds, inputs.attention_mask, config, keep_step_logits=True, position_ids=inputs.position_ids
    )
    # prefill in the chunked DeltaNet form, every later step in the recurrent one
    torch.testing.assert_close(torch.cat(out.step_logits), expected["greedy_step_logits"][0], atol=LOGITS_ATOL, rtol=0)
    assert out.token_ids == expected["greedy_ids"].tolist()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_greedy_and_beam_ids_from_the_api(case):
    chat, _, expected, _, thinking = prepare(case)
    steps = expected["greedy_ids"].shape[1]
    runs = {
        "greedy_ids": {},
        "beam3_ids": {"num_beams": 3},
        "beam3_rep1.2_ids": {"num_beams": 3, "repetition_penalty": 1.2},
    }
    for key, options in runs.items():
        result = chat.generate(
            messages_of(case), preset="greedy", thinking=thinking, max_new_tokens=steps, min_new_tokens=steps, **options
        )
        assert result.token_ids == expected[key][0].tolist(), key


@pytest.mark.parametrize("mode", ["16x", "4x"])
def test_cli_generate_gives_the_official_ids(mode, capsys):
    case = REFERENCE / "minicpmv46_tiny" / f"case_single_{mode}"
    image = messages_of(case)[0]["content"][0]["image"]
    argv = ["generate", "-m", str(case.parent / "checkpoint"), "--image", image, "-p", "What is in the image?"]
    argv += ["-n", "8", "--json", "--downsample-mode", mode, "--vision-dtype", "float32"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["token_ids"] == load_file(case / "expected.safetensors")["greedy_ids"][0].tolist()
    assert record["image_tokens"] == sum(load_json(case / "expected.json")["merger_tokens_per_crop"])


def test_downsample_mode_is_refused_where_there_is_none(capsys):
    argv = ["generate", "-m", str(REFERENCE / "minicpmv26_tiny" / "checkpoint"), "-p", "hi", "--downsample-mode", "4x"]
    assert main(argv) == 2
    assert "has none" in capsys.readouterr().err


def test_left_padded_batch_gives_each_rows_own_answer():
    """The DeltaNet layers see padded positions as zeros: a row's answer does not depend on the
    other rows of its batch (the text case is much shorter, so it is padded)."""
    single, text = REFERENCE / "minicpmv47_tiny" / "case_single_16x", REFERENCE / "minicpmv47_tiny" / "case_text"
    chat = chat_for(single)
    chat.processor.config.downsample_mode = chat.model.config.downsample_mode = "16x"
    results = chat.generate_batch(
        [messages_of(single), messages_of(text)], preset="greedy", thinking=False, max_new_tokens=8, min_new_tokens=8
    )
    for result, case in zip(results, (single, text)):
        assert result.token_ids == load_file(case / "expected.safetensors")["greedy_ids"][0].tolist()
