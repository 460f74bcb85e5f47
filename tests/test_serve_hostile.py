"""`minicpmv serve` against an attacker and a clumsy client: each defect once found is pinned with
its status code and message, and for the resource ones the bound (peak memory under the pixel
budget, slow clients dropped within the timeout, /health answering past 1,100 idle sockets)."""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from conftest import TINY  # noqa: E402
from live_server import data_url, image_part, running  # noqa: E402
from PIL import Image  # noqa: E402
from test_serve_cli import free_port, wait_healthy  # noqa: E402
from test_serve_limits import ask, post, refused  # noqa: E402

import minicpmv  # noqa: E402
from minicpmv.serving import ServerSettings  # noqa: E402

KEY = "k-123"
HI = {"type": "text", "text": "hi"}


@pytest.fixture(scope="module")
def chat():
    return minicpmv.load(TINY["2.6"] / "checkpoint")


@pytest.fixture(scope="module")
def png_6000():
    """A single-colour 6000x6000 PNG: about 160 KB that decode to 108 MB."""
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (200, 10, 10)).save(buffer, "PNG", compress_level=9)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def process_server(tmp_path_factory):
    """`minicpmv serve` in its own process (its memory measurable), small limits, key from the env."""
    port = free_port()
    folder = tmp_path_factory.mktemp("images")
    (folder / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(folder / "fifo")
    command = [
        sys.executable,
        "-m",
        "minicpmv",
        "serve",
        "-m",
        str(TINY["2.6"] / "checkpoint"),
        "--port",
        str(port),
        "--max-request-pixels",
        "8000000",
        "--max-image-pixels",
        "40000000",
        "--request-timeout",
        "1",
        "--max-connections",
        "64",
        "--allow-local-images",
        str(folder),
    ]
    process = subprocess.Popen(
        command, env={**os.environ, "MINICPMV_API_KEY": KEY}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)


def keyed(url: str, body, **headers) -> httpx.Response:
    return post(url, body, authorization=f"Bearer {KEY}", **headers)


def peak_rss_mb(process) -> float:
    with open(f"/proc/{process.pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM")) / 1024


# ---- memory: pixels are budgeted before decoding ---------------------------------------------


def test_compressible_images_are_refused_before_decoding(process_server, png_6000):
    """16 single-colour 6000x6000 PNGs (2.5 MB) once took the server from 0.7 to 4.2 GB."""
    url, process = process_server
    before = peak_rss_mb(process)
    content = [image_part(png_6000)] * 16 + [HI]
    for _ in range(4):
        refused(keyed(url, ask(content)), 400, "576000000 pixels", "limit is 8000000 per request")
    assert peak_rss_mb(process) - before < 8_000_000 * 3 / 2**20  # not one image's decoded RGB
    assert keyed(url, ask("hi")).status_code == 200


def test_a_full_queue_answers_429_before_decoding(chat, png_6000):
    """With the queue full, a big-image request once decoded for 32 s before its 429."""
    endless = ask("Tell me everything.", stream=True, max_tokens=20_000, min_tokens=20_000)
    with running(chat, ServerSettings(max_queue=1)) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json=endless, timeout=30) as streaming:
            lines = streaming.iter_lines()  # kept: a discarded iterator closes the connection
            next(lines)
            started = time.monotonic()
            refused(post(url, ask([image_part(png_6000)] * 2 + [HI])), 429, "busy")
            assert time.monotonic() - started < 1.0


def test_the_server_pixel_budget_is_shared_by_admitted_requests(chat):
    big = image_part(data_url_of(Image.new("RGB", (1000, 1000), (0, 90, 0))))
    endless = ask(
        [big, {"type": "text", "text": "Tell me everything."}], stream=True, max_tokens=20_000, min_tokens=20_000
    )
    with running(chat, ServerSettings(max_server_pixels=1_500_000)) as url:
        with httpx.stream("POST", url + "/v1/chat/completions", json=endless, timeout=30) as streaming:
            lines = streaming.iter_lines()
            next(lines)
            assert httpx.get(url + "/health").json()["image_pixels"] == 1_000_000
            response = post(url, ask([big, HI]))
            refused(response, 429, "1000000 more would pass its limit of 1500000")
            assert response.json()["error"]["code"] == "images_busy"
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").json()["image_pixels"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert post(url, ask([big, HI])).status_code == 200  # given back when the stream ended


def data_url_of(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# ---- placeholder text -------------------------------------------------------------------------


def test_image_marker_text_is_a_400_and_its_batch_mates_are_answered(chat):
    hostile = "<image>" + "<unk>" * 64 + "</image>"
    with running(chat, ServerSettings(max_batch=4)) as url:
        results = {}

        def client(name: str, text: str) -> None:
            results[name] = post(url, ask(text))

        threads = [threading.Thread(target=client, args=(f"ok{i}", f"Say {i}.")) for i in range(3)]
        threads.append(threading.Thread(target=client, args=("bad", hostile)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    refused(results["bad"], 400, "'<image>', an image marker")
    assert all(results[f"ok{i}"].status_code == 200 for i in range(3))


# ---- slow and idle clients --------------------------------------------------------------------


def raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_a_request_head_that_never_ends_is_dropped(process_server):
    url, _ = process_server
    with raw(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and nothing more
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
        assert time.monotonic() - started < 3  # --request-timeout 1


def test_a_body_at_one_byte_a_second_gets_408(process_server):
    url, _ = process_server
    with raw(url) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n"
        )
        started, answer = time.monotonic(), b""
        sock.settimeout(0.5)
        while b"\r\n\r\n" not in answer and time.monotonic() - started < 15:
            try:
                sock.sendall(b" ")
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 9  # the body timeout is 6 x --request-timeout


def test_health_answers_while_1100_idle_sockets_are_open(process_server):
    """1,100 idle sockets once made /health time out: past --max-connections 64 the oldest idle
    connection is closed to make room, so a client that sends its request is answered."""
    url, _ = process_server
    sockets = []
    try:
        for _ in range(1100):
            sockets.append(raw(url))
        started = time.monotonic()
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        assert time.monotonic() - started < 2
        closed = 0
        for sock in sockets[:1000]:
            sock.settimeout(2)
            closed += sock.recv(64) == b""
        assert closed == 1000
    finally:
        for sock in sockets:
            sock.close()


# ---- big text ---------------------------------------------------------------------------------


def test_a_30_mb_text_is_refused_without_tokenizing_it(chat):
    with running(chat, ServerSettings(max_body_bytes=40 << 20)) as url:
        started = time.monotonic()
        response = post(url, ask("word " * 6_000_000))
        refused(response, 400, "characters long, at least 23")  # 30 MB of text: over 2 million tokens
        assert response.json()["error"]["code"] == "context_length_exceeded"
        assert time.monotonic() - started < 10  # tokenizing it took 67-91 s
        assert post(url, ask("hi")).status_code == 200


# ---- cross-site use ---------------------------------------------------------------------------


def test_only_loopback_hosts_and_json_bodies(chat):
    with running(chat) as url:
        port = url.rsplit(":", 1)[1]
        refused(post(url, ask("hi"), host="evil.example"), 400, "Host 'evil.example'", "--allowed-hosts")
        refused(httpx.get(url + "/health", headers={"host": f"rebind.attacker.net:{port}"}), 400, "not one")
        refused(post(url, json.dumps(ask("hi")), **{"content-type": "text/plain"}), 415, "application/json")
        refused(post(url, json.dumps(ask("hi")), **{"content-type": "application/x-www-form-urlencoded"}), 415)
        assert post(url, ask("hi"), host=f"localhost:{port}").status_code == 200
        assert post(url, ask("hi"), **{"content-type": "application/json; charset=utf-8"}).status_code == 200
    with running(chat, ServerSettings(allowed_hosts=("box.lan",))) as url:
        assert post(url, ask("hi"), host="box.lan").status_code == 200


def test_api_key_from_the_environment(process_server):
    url, _ = process_server
    refused(post(url, ask("hi")), 401, "API key")
    assert keyed(url, ask("hi")).status_code == 200


# ---- sampling values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"seed": 2**64}, ["seed", "2**64 - 1"]),
        ({"seed": -5}, ["seed"]),
        ({"repetition_penalty": 1e-308, "temperature": 1}, ["repetition_penalty", "0.01"]),
        ({"top_k": 2**40}, ["top_k"]),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_out_of_range_sampling_values_are_400(process_server, fields, words, stream):
    """Each once gave a 500 (streamed: an error chunk with no [DONE])."""
    url, _ = process_server
    refused(keyed(url, ask("hi", stream=stream, **fields)), 400, *words)


# ---- image references -------------------------------------------------------------------------


def test_an_upper_case_data_scheme_is_a_data_url(process_server):
    url, _ = process_server
    upper = "DATA:" + data_url().removeprefix("data:")
    assert keyed(url, ask([image_part(upper), HI])).status_code == 200
    message = refused(keyed(url, ask([image_part("DATA:x" + "A" * 160_000), HI])), 400)
    assert len(message) < 300  # the error once echoed the whole 160 KB


@pytest.mark.parametrize(
    "name, words",
    [("fifo", ["not a regular file"]), ("bad\0name.png", ["not a usable"]), ("n" * 5000 + ".png", ["not a usable"])],
)
def test_local_paths_that_are_not_files(process_server, name, words):
    """A FIFO once hung its request forever; a NUL byte or a 5,000-character name gave a 500."""
    url, _ = process_server
    started = time.monotonic()
    message = refused(keyed(url, ask([image_part(name), HI])), 400, *words)
    assert time.monotonic() - started < 5 and len(message) < 300


# ---- the feature cache ------------------------------------------------------------------------


def test_image_features_are_not_shared_across_requests_by_default(chat):
    """A cache hit answered in 17 ms against 545-793 ms: one client could tell another's images."""
    body = ask([image_part(data_url()), HI])
    with running(chat) as url:
        first, second = (post(url, body).json()["timings"]["image_encode_ms"] for _ in range(2))
        assert chat.feature_cache_size == 0 and second > 0.2 * first
    chat.feature_cache_size = 16
    with running(chat, ServerSettings(share_feature_cache=True)) as url:
        post(url, body)
        assert chat.feature_cache_size == 16
        assert post(url, body).json()["timings"]["image_encode_ms"] < 0.2 * first


def test_unimplemented_openai_fields_are_refused_not_ignored():
    """tools, penalties, logit_bias...: a 400 naming the field;
    their "not used" values and harmless fields (user) pass."""
    from minicpmv.serving.protocol import APIError, parse_request

    base = {"messages": [{"role": "user", "content": "hi"}]}
    for field, value in [
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("presence_penalty", 0.5),
        ("logit_bias", {"42": 5}),
    ]:
        with pytest.raises(APIError, match=f"^{field}: not supported") as caught:
            parse_request(json.dumps({**base, field: value}).encode())
        assert caught.value.status == 400 and caught.value.param == field
    fine = {**base, "user": "me", "logprobs": False, "response_format": {"type": "text"}, "tools": []}
    assert parse_request(json.dumps(fine).encode()).messages


def test_cors_answers_the_given_origin_only(chat):
    """--cors ORIGIN: a browser page of that origin may call the API (preflight and response
    headers); any other origin gets no CORS headers, so its page cannot read answers."""
    import httpx

    settings = ServerSettings(model_name="tiny", cors_origins=("https://app.example",))
    with running(chat, settings) as url:
        asked = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        preflight = httpx.options(url + "/v1/chat/completions", headers=asked, timeout=30)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = httpx.options(url + "/v1/chat/completions", headers={**asked, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        answer = httpx.get(url + "/v1/models", headers={"Origin": "https://app.example"}, timeout=30)
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
