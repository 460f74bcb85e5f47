"""`minicpmv serve` driven by the official openai client: answers equal `ChatModel` with the same
settings, streamed or not, with usage and our timings."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from conftest import TINY  # noqa: E402
from live_server import EXAMPLE, data_url, image_part, running  # noqa: E402
from PIL import Image  # noqa: E402

import minicpmv  # noqa: E402
from minicpmv.serving import ServerSettings  # noqa: E402


@pytest.fixture(scope="module")
def chat():
    return minicpmv.load(TINY["2.6"] / "checkpoint")


@pytest.fixture(scope="module")
def server(chat):
    with running(chat, ServerSettings(model_name="tiny-2.6")) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


def question(text="What is in the image?"):
    return [{"role": "user", "content": [image_part(data_url()), {"type": "text", "text": text}]}]


def same_question(text="What is in the image?"):
    return [{"role": "user", "content": [Image.open(EXAMPLE), text]}]


def test_non_streamed_answer_equals_chat_model(client, chat):
    response = client.chat.completions.create(model="tiny-2.6", messages=question(), max_tokens=12)
    expected = chat.generate(same_question(), max_new_tokens=12)
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason == ("length" if expected.stopped_by == "length" else "stop")
    assert response.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert response.usage.completion_tokens == len(expected.token_ids)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    timings = response.model_extra["timings"]
    assert timings["image_tokens"] == expected.image_tokens > 0
    assert timings["image_encode_ms"] > 0 and timings["prefill_tokens_per_second"] > 0
    assert timings["decode_tokens_per_second"] > 0
    assert response.model == "tiny-2.6" and response.id.startswith("chatcmpl-")


def test_streamed_answer_equals_chat_model_and_ends_with_usage(client, chat):
    stream = client.chat.completions.create(
        model="tiny-2.6", messages=question(), max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    expected = chat.generate(same_question(), max_new_tokens=12)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].model_extra["timings"]["image_tokens"] == expected.image_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expected.token_ids)
    assert chunks[-1].usage.prompt_tokens == len(expected.prompt_token_ids)


def test_sampling_settings_and_stop_strings_are_those_of_chat_model(client, chat):
    settings = dict(temperature=0.9, top_p=0.8, seed=7)
    response = client.chat.completions.create(model="m", messages=question("Describe it."), max_tokens=24, **settings)
    expected = chat.generate(same_question("Describe it."), max_new_tokens=24, **settings)
    assert response.choices[0].message.content == expected.text
    stop = expected.text[3:5]
    stopped = client.chat.completions.create(
        model="m", messages=question("Describe it."), max_tokens=24, stop=[stop], **settings
    )
    assert (
        stopped.choices[0].message.content
        == chat.generate(same_question("Describe it."), max_new_tokens=24, stop=[stop], **settings).text
    )
    assert stopped.choices[0].finish_reason == "stop"


def test_multi_image_multi_turn_and_bare_string_image_url(client, chat):
    wide = Image.new("RGB", (900, 300), (200, 30, 30))
    path = EXAMPLE.parent / "wide-test.png"
    try:
        wide.save(path)
        wide_url = data_url(path)
    finally:
        path.unlink(missing_ok=True)
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                image_part(data_url()),
                {"type": "image_url", "image_url": wide_url},
                {"type": "text", "text": "Compare the two images."},
            ],
        },
        {"role": "assistant", "content": "They differ."},
        {"role": "user", "content": "How?"},
    ]
    response = client.chat.completions.create(model="m", messages=messages, max_tokens=10)
    expected = chat.generate(
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": [Image.open(EXAMPLE), wide, "Compare the two images."]},
            {"role": "assistant", "content": "They differ."},
            {"role": "user", "content": "How?"},
        ],
        max_new_tokens=10,
    )
    assert response.choices[0].message.content == expected.text
    assert response.usage.prompt_tokens == len(expected.prompt_token_ids)
    assert response.model_extra["timings"]["image_tokens"] == expected.image_tokens


def test_max_completion_tokens_and_default_length(client, chat):
    response = client.chat.completions.create(model="m", messages=question(), max_completion_tokens=3)
    assert response.usage.completion_tokens <= 3
    full = client.chat.completions.create(model="m", messages=question())
    assert full.choices[0].message.content == chat.generate(same_question()).text


def test_models_health_and_page(client, server):
    import httpx

    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-2.6"]
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny-2.6" and health["admitted"] == 0
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/v1/chat/completions" in page.text


def test_metrics_in_prometheus_format(client, server, chat):
    """/metrics: request counts by outcome and token counters that move with the answers."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    def samples():
        text = httpx.get(server + "/metrics", timeout=30).text
        return {
            (s.name, s.labels.get("outcome")): s.value for f in text_string_to_metric_families(text) for s in f.samples
        }

    before = samples()
    response = client.chat.completions.create(model="tiny-2.6", messages=question(), max_tokens=5)
    after = samples()
    assert after["minicpmv_completion_tokens_total", None] - before["minicpmv_completion_tokens_total", None] == (
        response.usage.completion_tokens
    )
    assert after["minicpmv_prompt_tokens_total", None] - before["minicpmv_prompt_tokens_total", None] == (
        response.usage.prompt_tokens
    )
    assert after["minicpmv_requests_total", "completed"] == before["minicpmv_requests_total", "completed"] + 1
    assert after["minicpmv_time_to_first_token_seconds_count", None] >= 1


def test_logprobs_are_the_models_own(client, chat):
    """logprobs / top_logprobs: each answer token's log-probability under the model; their sum is
    the log-likelihood of the answer given the prompt, as a teacher-forced forward pass computes
    it; the alternatives are the most likely tokens, best first."""
    import torch

    response = client.chat.completions.create(
        model="tiny-2.6", messages=question(), max_tokens=6, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    expected = chat.generate(same_question(), max_new_tokens=6)
    assert len(content) == len(expected.token_ids)
    prompt_ids, embeds = chat.prompt_embeddings(same_question())
    answer = torch.tensor([expected.token_ids])
    with torch.inference_mode():
        full = torch.cat([embeds, chat.model.llm.embed(answer)], dim=1)
        scores = torch.log_softmax(chat.model.llm(full)[0, len(prompt_ids) - 1 : -1].float(), dim=-1)
    likelihood = scores[torch.arange(answer.shape[1]), answer[0]].sum().item()
    assert abs(sum(t.logprob for t in content) - likelihood) < 1e-3
    for token in content:
        alternatives = [a.logprob for a in token.top_logprobs]
        assert len(alternatives) == 3 and alternatives == sorted(alternatives, reverse=True)
        assert token.logprob <= alternatives[0] + 1e-6
    stream = client.chat.completions.create(
        model="tiny-2.6", messages=question(), max_tokens=6, logprobs=True, top_logprobs=3, stream=True
    )
    streamed = [t for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]  # same, in pieces


def test_response_format_json_schema_always_validates(client):
    """Constrained decoding (llguidance): every answer, greedy or sampled at a high temperature
    with the tiny random model, is JSON that validates against the schema; json_object gives an
    object; an unknown type is a 400."""
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("llguidance")
    import json as json_module

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "count": {"type": "integer", "minimum": 0, "maximum": 99},
            "colour": {"enum": ["red", "green", "blue"]},
            "ok": {"type": "boolean"},
        },
        "required": ["name", "count", "colour", "ok"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "shape", "schema": schema}}
    for seed in range(8):
        options = {"temperature": 1.5, "seed": seed} if seed else {}
        response = client.chat.completions.create(
            model="tiny-2.6", messages=question(), max_tokens=80, response_format=response_format, **options
        )
        jsonschema.validate(json_module.loads(response.choices[0].message.content), schema)
    anything = client.chat.completions.create(
        model="tiny-2.6",
        messages=question(),
        max_tokens=80,
        response_format={"type": "json_object"},
        seed=1,
        temperature=1,
    )
    text = anything.choices[0].message.content
    assert text.startswith("{")
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.chat.completions.create(
            model="tiny-2.6", messages=question(), max_tokens=4, response_format={"type": "yaml"}
        )
