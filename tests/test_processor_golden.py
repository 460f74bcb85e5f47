"""For every case of the three tiny checkpoints: the prompt after the chat template, input_ids,
image_bound and tgt_sizes equal the official processor's output exactly."""

import pytest
import torch
from conftest import REFERENCE, golden_cases, load_json

from minicpmv.processing import MiniCPMVProcessor

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
    inputs = processor(batch)
    assert inputs.input_ids.tolist() == expected["input_ids"]
    assert [b.tolist() for b in inputs.image_bound] == expected["image_bound"]
    assert [t.tolist() for t in inputs.tgt_sizes] == expected["tgt_sizes"]
    if "prompts_after_chat_template" in expected:
        assert inputs.prompts == expected["prompts_after_chat_template"]
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


def test_2_0_prompt_text_matches_official_chat():
    for case_dir in sorted((REFERENCE / "minicpmv20_tiny").glob("case_*")):
        processor, batch, expected = load_case("2.0", case_dir)
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
