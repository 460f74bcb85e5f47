"""4.5's thinking mode over the OpenAI API: `chat_template_kwargs.enable_thinking` per request (the
server's `--thinking` the default), the think block returned as `reasoning_content` as vLLM does,
streamed or not; the split rule is the 4.5 chat template's own."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from conftest import TINY  # noqa: E402
from live_server import EXAMPLE, data_url, image_part, running  # noqa: E402
from PIL import Image  # noqa: E402

import minicpmv  # noqa: E402
from minicpmv.serving import ServerSettings  # noqa: E402
from minicpmv.serving.protocol import ReasoningStream, split_reasoning  # noqa: E402

QUESTION = [{"role": "user", "content": [image_part(data_url()), {"type": "text", "text": "What is it?"}]}]
SAME = [{"role": "user", "content": [Image.open(EXAMPLE), "What is it?"]}]


@pytest.fixture(scope="module")
def chat():
    return minicpmv.load(TINY["4.5"] / "checkpoint")


def test_split_reasoning_follows_the_4_5_template_rule():
    """The template's rule for a message it is given back: reasoning = before </think>, without
    <think> and surrounding newlines; content = after it, leading newlines dropped."""
    assert split_reasoning("<think>\nfirst, look.\n</think>\n\nA cat.") == ("first, look.", "A cat.")
    assert split_reasoning("<think>\nstill thinking") == ("still thinking", "")  # cut off: all reasoning


@pytest.mark.parametrize("cut", [1, 2, 3, 5])
def test_reasoning_stream_gives_the_same_split_however_the_text_is_cut(cut):
    text = "<think>\nfirst, look.\n\nthen <b> count.\n</think>\n\nA cat.\n"
    stream, got = ReasoningStream(), {"reasoning_content": "", "content": ""}
    pieces = [text[i : i + cut] for i in range(0, len(text), cut)]
    for piece in [*pieces, ""]:
        for name, value in stream.push(piece, final=piece == ""):
            got[name] += value
    assert (got["reasoning_content"], got["content"]) == split_reasoning(text)


def test_thinking_answers_come_back_as_reasoning_content(chat):
    expected = chat.generate(SAME, thinking=True, max_new_tokens=8)
    plain = chat.generate(SAME, max_new_tokens=8)
    with running(chat, ServerSettings(model_name="tiny-4.5")) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        thinking = {"chat_template_kwargs": {"enable_thinking": True}}
        response = client.chat.completions.create(
            model="tiny-4.5", messages=QUESTION, max_tokens=8, extra_body=thinking
        )
        message = response.choices[0].message
        assert (message.model_extra["reasoning_content"], message.content) == split_reasoning(expected.text)
        stream = client.chat.completions.create(
            model="tiny-4.5", messages=QUESTION, max_tokens=8, extra_body=thinking, stream=True
        )
        reasoning = "".join(c.choices[0].delta.model_extra.get("reasoning_content") or "" for c in stream if c.choices)
        assert reasoning == split_reasoning(expected.text)[0]
        off = client.chat.completions.create(model="tiny-4.5", messages=QUESTION, max_tokens=8)
        assert off.choices[0].message.content == plain.text
        assert "reasoning_content" not in (off.choices[0].message.model_extra or {})


def test_server_thinking_default_and_its_per_request_override(chat):
    expected = chat.generate(SAME, thinking=True, max_new_tokens=6)
    plain = chat.generate(SAME, max_new_tokens=6)
    with running(chat, ServerSettings(model_name="tiny-4.5", thinking=True)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        default = client.chat.completions.create(model="tiny-4.5", messages=QUESTION, max_tokens=6)
        assert default.choices[0].message.model_extra["reasoning_content"] == split_reasoning(expected.text)[0]
        off = client.chat.completions.create(
            model="tiny-4.5",
            messages=QUESTION,
            max_tokens=6,
            extra_body={"chat_template_kwargs": {"enable_thinking": False}},
        )
        assert off.choices[0].message.content == plain.text


def test_thinking_on_a_model_without_it_is_a_400():
    chat = minicpmv.load(TINY["2.6"] / "checkpoint")
    with running(chat, ServerSettings(model_name="tiny-2.6")) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="no thinking mode"):
            client.chat.completions.create(
                model="tiny-2.6",
                messages=QUESTION,
                max_tokens=4,
                extra_body={"chat_template_kwargs": {"enable_thinking": True}},
            )
