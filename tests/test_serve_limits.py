"""Every limit and every kind of bad input of `minicpmv serve`: its status code and its one-line
message, in OpenAI's error shape; the server keeps answering afterwards."""

from __future__ import annotations

import base64
import io
import json

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from conftest import TINY  # noqa: E402
from live_server import EXAMPLE, data_url, image_part, running  # noqa: E402
from PIL import Image  # noqa: E402

import minicpmv  # noqa: E402
from minicpmv.serving import ImagePolicy, ServerSettings  # noqa: E402

CONTEXT = 32768  # the tiny 2.6 checkpoint's max_position_embeddings


@pytest.fixture(scope="module")
def chat():
    return minicpmv.load(TINY["2.6"] / "checkpoint")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("allowed")
    (folder / "example.png").write_bytes(EXAMPLE.read_bytes())
    return folder


@pytest.fixture(scope="module")
def server(chat, image_dir):
    policy = ImagePolicy(max_images=2, max_pixels=2_000_000, local_dir=image_dir)
    with running(chat, ServerSettings(max_body_bytes=200_000, images=policy)) as url:
        yield url


@pytest.fixture(scope="module")
def locked_server(chat):
    with running(chat, ServerSettings(api_key="s3cret")) as url:
        yield url


def post(url: str, body, **headers) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(
        url + "/v1/chat/completions",
        content=content,
        timeout=60,
        headers={"content-type": "application/json", **headers},
    )


def ask(content, **fields) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


def refused(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert "\n" not in error["message"]
    for word in words:
        assert word in error["message"], error["message"]
    return error["message"]


def png_url(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_body_size_limit(server):
    refused(post(server, ask("x" * 300_000)), 413, "over the limit of 200000 bytes")
    body = json.dumps(ask("x" * 300_000)).encode()
    chunked = httpx.post(
        server + "/v1/chat/completions",
        content=iter([body[:100_000], body[100_000:]]),
        headers={"content-type": "application/json"},
    )  # no Content-Length to trust
    refused(chunked, 413, "over the limit of 200000 bytes")


def test_number_of_images(server):
    refused(
        post(server, ask([image_part(data_url())] * 3 + [{"type": "text", "text": "hi"}])),
        400,
        "3 images",
        "limit is 2",
    )


def test_image_pixels(server):
    message = refused(
        post(server, ask([image_part(png_url(2000, 1500)), {"type": "text", "text": "hi"}])),
        400,
        "messages.0.content.0.image_url",
        "too large",
        "3000000 pixels",
    )
    assert "limit 2000000" in message


def test_max_tokens_above_context(server):
    refused(post(server, ask("hi", max_tokens=CONTEXT + 10)), 400, "max_tokens", f"context of {CONTEXT}")
    refused(post(server, {**ask("hi"), "max_completion_tokens": CONTEXT}), 400, "max_completion_tokens")


def test_prompt_longer_than_context(server):
    text = "a b " * 20_000  # over 32768 tokens, under the body limit
    response = post(server, ask(text))
    refused(response, 400, "tokens long", f"limit of {CONTEXT - 1}")
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_prompt_plus_max_tokens_over_context(server):
    refused(
        post(server, ask([image_part(data_url()), {"type": "text", "text": "hi"}], max_tokens=CONTEXT - 100)),
        400,
        "together they exceed",
        f"context of {CONTEXT}",
    )


def test_malformed_json(server):
    refused(post(server, b'{"messages": [}'), 400, "not valid JSON")
    refused(post(server, b""), 400, "not valid JSON")


def test_unknown_fields_are_ignored(server):
    # fields that change nothing about the answer (unimplemented ones with other values: a 400,
    # tests/test_serve_hostile.py)
    body = ask("hi", frequency_penalty=0, user="someone", logit_bias={}, tools=None, metadata={"a": "b"})
    body["messages"][0]["name"] = "ann"
    response = post(server, body)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(
    "body, words",
    [
        (ask("hi", max_tokens="4"), ["max_tokens", "valid integer"]),
        (ask("hi", temperature="hot"), ["temperature"]),
        (ask("hi", temperature=3.5), ["temperature", "less than or equal to 2"]),
        (ask("hi", stream="yes"), ["stream", "valid boolean"]),
        ({"messages": "hi"}, ["messages", "valid array"]),
        ({"messages": []}, ["messages", "at least 1"]),
        ({"max_tokens": 4}, ["messages", "Field required"]),
        ({"messages": [{"role": "robot", "content": "hi"}]}, ["messages.0.role"]),
        (ask([{"type": "video", "url": "x"}]), ["messages.0.content.0", "video"]),
        (ask([{"type": "image_url", "image_url": {"uri": "x"}}]), ["messages.0.content.0.image_url"]),
        (ask(5), ["messages.0.content"]),
        (ask("hi", n=2), ["n: only n=1"]),
        (ask("hi", stop=["a", "b", "c", "d", "e"]), ["stop"]),
    ],
)
def test_wrong_types_and_values(server, body, words):
    refused(post(server, body), 400, *words)


def test_bad_conversations_and_options(server):
    refused(post(server, {"messages": [{"role": "assistant", "content": "hi"}]}), 400, "first non-system message")
    refused(post(server, ask("hi", max_tokens=4, min_tokens=9)), 400, "min_new_tokens")


@pytest.mark.parametrize(
    "url, words",
    [
        ("data:image/png;base64,@@not-base64@@", ["invalid base64"]),
        ("data:image/png;base64," + base64.b64encode(b"just some text, not a picture").decode(), ["not an image"]),
        ("data:text/plain;base64,aGVsbG8=", ["media type 'text/plain'"]),
        ("data:image/png;base64,", ["empty image data"]),
        ("https://example.com/cat.png", ["remote image URLs are refused", "--allow-remote-images"]),
        ("ftp://example.com/cat.png", ["unsupported URL scheme 'ftp'"]),
        ("../example.png", ["outside the folder"]),
        ("/etc/passwd", ["outside the folder"]),
        ("missing.png", ["no such file"]),
    ],
)
def test_bad_images(server, url, words):
    refused(post(server, ask([image_part(url), {"type": "text", "text": "hi"}])), 400, "image_url", *words)


def test_local_images_inside_the_allowed_folder(server, chat):
    for url in ("example.png", "file://example.png"):
        response = post(server, ask([image_part(url), {"type": "text", "text": "What is in the image?"}]))
        assert response.status_code == 200, response.text
    expected = chat.generate(
        [{"role": "user", "content": [Image.open(EXAMPLE), "What is in the image?"]}], max_new_tokens=4
    )
    assert response.json()["choices"][0]["message"]["content"] == expected.text


def test_local_images_refused_without_a_folder(locked_server):
    response = post(
        locked_server, ask([image_part(str(EXAMPLE)), {"type": "text", "text": "hi"}]), authorization="Bearer s3cret"
    )
    refused(response, 400, "local image paths are refused", "--allow-local-images")


def test_api_key(locked_server):
    refused(post(locked_server, ask("hi")), 401, "API key")
    refused(post(locked_server, ask("hi"), authorization="Bearer wrong"), 401, "API key")
    refused(httpx.get(locked_server + "/v1/models"), 401, "API key")
    assert post(locked_server, ask("hi"), authorization="Bearer s3cret").status_code == 200
    client = openai.OpenAI(base_url=locked_server + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    good = openai.OpenAI(base_url=locked_server + "/v1", api_key="s3cret", max_retries=0)
    assert good.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert httpx.get(locked_server + "/health").status_code == 200  # health checks need no key


def test_unknown_route_and_method(server):
    refused(httpx.get(server + "/v1/nothing"), 404, "/v1/nothing")
    refused(httpx.get(server + "/v1/chat/completions"), 405, "GET /v1/chat/completions")


def test_still_healthy_after_all_that(server):
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["admitted"] == 0 and health["failed"] == 0
    assert post(server, ask("hi")).status_code == 200
