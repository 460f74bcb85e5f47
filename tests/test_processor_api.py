"""The processor's options and its refusals: tag counts, lengths, roles, marker text, content kinds."""

import pytest
import torch
from conftest import TINY
from PIL import Image

from minicpmv import ImageError, MiniCPMVProcessor, ProcessorConfig, PromptError, PromptTooLongError
from minicpmv.errors import ConfigError
from minicpmv.processing.placeholders import IMAGE_TAG


@pytest.fixture(scope="module")
def proc26():
    return MiniCPMVProcessor.from_pretrained(TINY["2.6"] / "checkpoint")


@pytest.fixture(scope="module")
def proc20():
    return MiniCPMVProcessor.from_pretrained(TINY["2.0"] / "checkpoint")


def big_image():
    return Image.new("RGB", (1344, 896), (30, 60, 90))


def test_max_slice_nums_per_call(proc26):
    messages = [{"role": "user", "content": [big_image(), "hi"]}]
    full = proc26(messages)
    single = proc26(messages, max_slice_nums=1)
    assert len(full.pixel_values[0]) == 7 and len(single.pixel_values[0]) == 1
    assert single.tgt_sizes[0].shape == (1, 2)
    with pytest.raises(PromptError, match="max_slice_nums"):
        proc26(messages, max_slice_nums=0)


def test_use_image_id_per_call_and_image_index_counts_per_prompt(proc26):
    small = Image.new("RGB", (100, 100))
    messages = [{"role": "user", "content": [small, small, "compare"]}]
    tok = proc26.tokenizer
    with_ids = tok.decode(proc26(messages).input_ids[0].tolist())
    assert "<image_id>0</image_id>" in with_ids and "<image_id>1</image_id>" in with_ids
    without = tok.decode(proc26(messages, use_image_id=False).input_ids[0].tolist())
    assert "<image_id>" not in without


def test_system_prompt_replaces_default_system_turn(proc26):
    inputs = proc26([{"role": "user", "content": "hello"}], system_prompt="Be brief.")
    assert inputs.prompts[0].startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "You are a helpful assistant." not in inputs.prompts[0]


def test_text_only_conversation_has_no_images(proc26):
    inputs = proc26([{"role": "user", "content": "hello"}])
    assert inputs.pixel_values == [[]] and inputs.image_bound[0].shape == (0, 2)
    assert inputs.tgt_sizes[0].shape == (0, 2)


def test_openai_style_content_parts(proc26):
    import base64
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (50, 50), "red").save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]
    inputs = proc26(messages)
    assert inputs.prompts[0].count(IMAGE_TAG) == 1
    assert inputs.prompts[0].index("what is this?") < inputs.prompts[0].index(IMAGE_TAG)


def test_image_tag_typed_in_text_is_refused_before_it_counts_as_an_image(proc26):
    messages = [{"role": "user", "content": [f"look {IMAGE_TAG}", Image.new("RGB", (20, 20))]}]
    with pytest.raises(PromptError, match=r"message 0: the text contains '\(<image>\./</image>\)', an image marker"):
        proc26(messages)


@pytest.mark.parametrize(
    "text", ["<image>" + "<unk>" * 64 + "</image>", "a <unk> b", "<slice>x</slice>", "<image_id>0</image_id>"]
)
def test_any_placeholder_marker_in_text_is_refused(proc26, text):
    """Marker text once gave a shape mismatch deep in the model (a 500 for the whole batch)."""
    with pytest.raises(PromptError, match="image marker"):
        proc26([{"role": "user", "content": text}])


def test_marker_tokens_typed_in_text_are_refused(proc26):
    with pytest.raises(PromptError, match="image marker"):
        proc26([{"role": "user", "content": "what does <image> mean?"}])


def test_too_long_prompt_is_an_error_not_a_cut(proc26):
    messages = [{"role": "user", "content": [big_image(), "describe"]}]
    length = proc26(messages).input_ids.shape[1]
    assert proc26(messages, max_length=length).input_ids.shape[1] == length
    with pytest.raises(PromptTooLongError, match=f"{length} tokens long.*limit of {length - 1}"):
        proc26(messages, max_length=length - 1)


@pytest.mark.parametrize(
    "messages,fragment",
    [
        ([], "non-empty list"),
        ([{"role": "user"}], "'role' and 'content'"),
        ([{"role": "robot", "content": "hi"}], "unknown role"),
        ([{"role": "assistant", "content": "hi"}], "first non-system message"),
        ([{"role": "user", "content": [3.5]}], "unsupported content item"),
    ],
)
def test_malformed_messages(proc26, messages, fragment):
    with pytest.raises(PromptError, match=fragment):
        proc26(messages)


def test_bad_image_in_messages_names_it(proc26, tmp_path):
    with pytest.raises(ImageError, match="nothing.png: no such file"):
        proc26([{"role": "user", "content": [{"image": tmp_path / "nothing.png"}, "hi"]}])


def test_2_0_multi_turn_format(proc20):
    messages = [
        {"role": "user", "content": [Image.new("RGB", (60, 40)), "What?"]},
        {"role": "assistant", "content": "A box."},
        {"role": "user", "content": "Sure?"},
    ]
    prompt = proc20(messages).prompts[0]
    assert prompt == f"<用户>{IMAGE_TAG}What?<AI>A box.<用户>Sure?<AI>"
    ids = proc20(messages).input_ids[0].tolist()
    assert ids[0] == proc20.tokenizer.require_id("<s>")


def test_batch_of_three_left_padded(proc26):
    conversations = [[{"role": "user", "content": "a" * n}] for n in (1, 30, 5)]
    inputs = proc26(conversations)
    lengths = inputs.attention_mask.sum(1).tolist()
    assert inputs.input_ids.shape == (3, max(lengths))
    for row, length in enumerate(lengths):
        alone = proc26(conversations[row]).input_ids[0]
        assert torch.equal(inputs.input_ids[row, -length:], alone)


def test_config_disagreement_is_reported(tmp_path):
    import json
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(TINY["2.6"] / "checkpoint", folder)
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    pre["image_feature_size"] = 32
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    with pytest.raises(ConfigError, match="query_num: preprocessor_config.json has 32 but config.json has 64"):
        ProcessorConfig.from_pretrained(folder)


def test_unknown_version_is_a_config_error():
    with pytest.raises(ConfigError, match="4.0 is not supported"):
        ProcessorConfig.defaults("4.0")
