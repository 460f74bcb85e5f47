"""For every case of the five tiny checkpoints: the prompt after the chat template, input_ids,
image_bound and tgt_sizes equal the official processor's output exactly."""

import hashlib

import pytest
import torch
from conftest import REFERENCE, case_options, golden_cases, load_json

from minicpmv.model.minicpmv import strip_to_image
from minicpmv.processing import MiniCPMVProcessor
from minicpmv.processing.placeholders import compact_placeholder

CASES = golden_cases()


def to_messages(raw):
    """messages.json stands {"image": path} for PIL images; paths are relative to the reference dir."""

    def item(x):
        return {"image": REFERENCE / x["image"]} if isinstance(x, dict) else x

    return [{"role": m["role"], "content": [item(x) for x in m["content"]]} for m in raw]


def load_case(version, case_dir):
    raw = load_json(case_dir / "messages.json")
    batch = [to_messages(conv) for conv in raw] if isinstance(raw[0], list) else [to_messages(raw)]
    processor = MiniCPMVProcessor.from_pretrained(case_dir.parent / "checkpoint")
    return processor, batch, load_json(case_dir / "expected.json")


@pytest.mark.parametrize("version,case_dir", CASES, ids=[f"{v}-{c.name}" for v, c in CASES])
def test_processor_matches_official(version, case_dir):
    processor, batch, expected = load_case(version, case_dir)
    inputs = processor(batch, **case_options(expected))
    assert inputs.input_ids.tolist() == expected["input_ids"]
    assert [b.tolist() for b in inputs.image_bound] == expected["image_bound"]
    if "tgt_sizes" in expected:  # 1.0 has one fixed 32x32 view
        assert [t.tolist() for t in inputs.tgt_sizes] == expected["tgt_sizes"]
    if "prompts_after_chat_template" in expected:
        assert inputs.prompts == expected["prompts_after_chat_template"]
    if "decoded_input_with_specials_compact" in expected:
        decoded = [processor.tokenizer.decode(row.tolist()) for row in inputs.input_ids]
        assert [compact_placeholder(text) for text in decoded] == expected["decoded_input_with_specials_compact"]
    if "decoded_input_with_specials" in expected:
        decoded = [
            processor.tokenizer.decode(row[mask.bool()].tolist())
            for row, mask in zip(inputs.input_ids, inputs.attention_mask)
        ]
        assert decoded == [text.lstrip("!") for text in expected["decoded_input_with_specials"]]
    for bounds, row in zip(inputs.image_bound, inputs.input_ids):
        unk = processor.tokenizer.require_id(processor.config.unk)
        for start, end in bounds.tolist():
            assert (row[start:end] == unk).all()


@pytest.mark.parametrize("folder", ["minicpmv20_tiny", "minicpmv10_tiny"])
def test_minicpm2_prompt_text_matches_official_chat(folder):
    """2.0 and 1.0 build `<用户><image>..</image>\nQUESTION<AI>` by hand (no template)."""
    for case_dir in sorted((REFERENCE / folder).glob("case_*")):
        processor, batch, expected = load_case(None, case_dir)
        prompt, images = processor.build_prompt(batch[0])
        encoded = processor.encode_images(images)
        from minicpmv.processing.placeholders import expand_image_tags

        text = expand_image_tags(prompt, [processor.placeholder(e.plan, i) for i, e in enumerate(encoded)])
        assert text == expected["prompt_before_tokenization"]


def test_2_6_batch_is_left_padded_with_zero_and_masked():
    processor, batch, expected = load_case("2.6", REFERENCE / "minicpmv26_tiny" / "case_batch")
    inputs = processor(batch)
    lengths = [len(processor(conv).input_ids[0]) for conv in batch]
    pad = inputs.input_ids.shape[1] - min(lengths)
    assert pad > 0
    assert inputs.attention_mask[1, :pad].sum() == 0 and inputs.attention_mask[1, pad:].all()
    assert (inputs.input_ids[1, :pad] == 0).all()
    single = processor(batch[1])
    assert torch.equal(inputs.image_bound[1], single.image_bound[0] + pad)


def test_2_5_starts_with_two_bos_tokens():
    processor, batch, _ = load_case("2.5", REFERENCE / "minicpmv25_tiny" / "case_single")
    bos = processor.tokenizer.require_id("<|begin_of_text|>")
    assert processor(batch).input_ids[0, :3].tolist()[:2] == [bos, bos]


def _sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("case_dir", sorted((REFERENCE / "minicpmv10_tiny").glob("case_*")), ids=lambda p: p.name)
def test_1_0_squashes_the_image_to_448_without_slicing(case_dir):
    """1.0 quirk: Resize((448, 448), bicubic) ignores the aspect ratio; one view, no slices;
    float pixels (k/255 - 0.5)/0.5 bit-exact."""
    processor, batch, expected = load_case("1.0", case_dir)
    inputs = processor(batch)
    assert inputs.tgt_sizes[0].tolist() == [[32, 32]] and inputs.plans[0][0].grid is None
    image = strip_to_image(inputs.pixel_values[0][0], 32, 32)[None]  # (1, 3, 448, 448)
    assert _sha256(image) == expected["pixel_values_float32_sha256"]


@pytest.mark.parametrize("case_dir", sorted((REFERENCE / "minicpmv45_tiny").glob("case_*")), ids=lambda p: p.name)
def test_4_5_crops_are_bit_exact_in_slice_index_major_order(case_dir):
    """4.5 quirk: the crops of a temporal group are ordered slice-index-major (every frame's
    overview, then every frame's slice 0, ...); still images keep 2.6's pixels and order."""
    processor, batch, expected = load_case("4.5", case_dir)
    inputs = processor(batch, **case_options(expected))
    assert [_sha256(crop) for crop in inputs.pixel_values[0]] == expected["crop_float32_sha256"]
    groups = [group for unit in inputs.time_units[0] for group in unit]
    assert groups == expected["temporal_ids_per_crop_after_processor"][0]


def test_4_5_placeholder_only_on_a_groups_first_frame():
    """4.5 quirk: frames after a group's first get no placeholder, the text before them is
    stripped, and <image_id> numbers frames by their index in the message (0, then 2)."""
    processor, batch, expected = load_case("4.5", REFERENCE / "minicpmv45_tiny" / "case_video_sliced_thinking")
    inputs = processor(batch, **case_options(expected))
    text = compact_placeholder(processor.tokenizer.decode(inputs.input_ids[0].tolist()))
    assert "</slice>\n<image_id>2</image_id>" in text and "<image_id>1<" not in text
    assert len(inputs.image_bound[0]) == 6  # 2 groups x (overview + 2 slices)


def test_4_5_always_returns_time_ids_for_still_images():
    """4.5 quirk: still images still take the temporal path, as groups of one crop with id -1."""
    processor, batch, expected = load_case("4.5", REFERENCE / "minicpmv45_tiny" / "case_single")
    assert processor(batch).time_units[0] == [[[-1], [-1], [-1]]]


def test_4_5_thinking_prompt_ends_in_an_open_think_block():
    processor, batch, _ = load_case("4.5", REFERENCE / "minicpmv45_tiny" / "case_single")
    assert processor(batch, thinking=True).prompts[0].endswith("<|im_start|>assistant\n<think>\n")
    assert processor(batch).prompts[0].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_thinking_and_temporal_ids_are_refused_where_a_version_has_none():
    from minicpmv.errors import PromptError

    processor, batch, _ = load_case("2.6", REFERENCE / "minicpmv26_tiny" / "case_single")
    with pytest.raises(PromptError, match="no thinking mode"):
        processor(batch, thinking=True)
    with pytest.raises(PromptError, match="temporal_ids"):
        processor(batch, temporal_ids=[[1]])


def test_4_5_temporal_ids_must_cover_every_frame():
    from minicpmv.errors import PromptError

    processor, batch, expected = load_case("4.5", REFERENCE / "minicpmv45_tiny" / "case_video")
    with pytest.raises(PromptError, match="cover 4 frame"):
        processor(batch, temporal_ids=[[2, 5], [8, 11]])
