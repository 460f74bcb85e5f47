"""`minicpmv serve` under load, on loopback only, bounded in count and time: concurrent clients
(half streaming) are all answered with their own text or cleanly refused with 429; a client
killed mid-stream cancels its generation and frees its slot."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from conftest import TINY  # noqa: E402
from live_server import running  # noqa: E402

import minicpmv  # noqa: E402
from minicpmv.serving import ServerSettings  # noqa: E402

CLIENTS = 32


@pytest.fixture(scope="module")
def chat():
    return minicpmv.load(TINY["2.6"] / "checkpoint")


def ask(text: str, **fields) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 12, **fields}


def streamed_text(response: httpx.Response) -> str:
    """Join the deltas of an SSE answer; it must end with [DONE]."""
    text, events = "", [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        chunk = json.loads(event)
        assert "error" not in chunk, chunk
        text += "".join(choice["delta"].get("content") or "" for choice in chunk["choices"])
    return text


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def test_concurrent_clients_are_answered_or_refused_cleanly(chat):
    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(CLIENTS)]
    expected = [chat.generate([{"role": "user", "content": p}], max_new_tokens=12).text for p in prompts]
    outcomes: list = [None] * CLIENTS
    barrier = threading.Barrier(CLIENTS)

    def client(i: int, url: str) -> None:
        barrier.wait(timeout=30)
        body = ask(prompts[i], stream=i % 2 == 0)
        try:
            if body["stream"]:
                with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
                    outcomes[i] = (
                        response.status_code,
                        streamed_text(response)
                        if response.status_code == 200
                        else json.loads(response.read())["error"]["message"],
                    )
            else:
                response = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
                payload = response.json()
                outcomes[i] = (
                    response.status_code,
                    payload["choices"][0]["message"]["content"]
                    if response.status_code == 200
                    else payload["error"]["message"],
                )
        except Exception as exc:  # noqa: BLE001 - recorded and asserted below
            outcomes[i] = (None, repr(exc))

    with running(chat, ServerSettings(max_queue=8)) as url:
        threads = [threading.Thread(target=client, args=(i, url)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        after = health(url)
        assert httpx.post(url + "/v1/chat/completions", json=ask(prompts[0]), timeout=60).status_code == 200
    statuses = [status for status, _ in outcomes]
    assert set(statuses) <= {200, 429}, outcomes
    answered = [i for i, (status, _) in enumerate(outcomes) if status == 200]
    assert len(answered) >= 8  # at least a full queue's worth got in
    for i in answered:  # each client got its own answer, never another's text
        assert outcomes[i][1] == expected[i]
    for status, message in outcomes:
        if status == 429:
            assert "busy" in message and "limit 8" in message
    assert after["status"] == "ok" and after["admitted"] == 0 and after["failed"] == 0
    assert after["completed"] == len(answered) and after["refused"] == CLIENTS - len(answered)


def open_stream(url: str, body: dict) -> socket.socket:
    """Start a streamed request on a raw socket and return it once the first chunk has arrived."""
    address = urlparse(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=30)
    payload = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    received = b""
    while b"data: " not in received:
        piece = sock.recv(65536)
        assert piece, received  # the server closed the connection without streaming
        received += piece
    assert received.startswith(b"HTTP/1.1 200")
    return sock


def test_killed_streaming_client_frees_its_slot(chat):
    endless = ask("Tell me everything.", stream=True, max_tokens=20_000, min_tokens=20_000)
    with running(chat, ServerSettings(max_queue=1)) as url:
        sock = open_stream(url, endless)
        busy = httpx.post(url + "/v1/chat/completions", json=ask("hi"), timeout=30)
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "queue_full"
        assert health(url)["admitted"] == 1
        started = time.monotonic()
        sock.close()  # the client goes away mid-stream
        while health(url)["admitted"] and time.monotonic() - started < 20:
            time.sleep(0.05)
        status = health(url)
        assert status["admitted"] == 0 and status["cancelled"] == 1 and status["completed"] == 0
        assert time.monotonic() - started < 10  # cancelled, not run to its 20000 tokens
        assert httpx.post(url + "/v1/chat/completions", json=ask("hi"), timeout=30).status_code == 200


def test_waiting_greedy_requests_are_batched_with_their_own_answers(chat):
    prompts = ["Name a colour.", "Count to three, please.", "hi"]
    expected = [chat.generate([{"role": "user", "content": p}], max_new_tokens=12).text for p in prompts]
    answers: dict = {}

    def client(i: int, url: str) -> None:
        response = httpx.post(url + "/v1/chat/completions", json=ask(prompts[i]), timeout=60)
        answers[i] = response.json()["choices"][0]["message"]["content"]

    with running(chat, ServerSettings(max_queue=8, max_batch=8, max_streams=1)) as url:  # the long answer blocks
        sock = open_stream(url, ask("Tell me everything.", stream=True, max_tokens=20_000, min_tokens=20_000))
        threads = [threading.Thread(target=client, args=(i, url)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while health(url)["admitted"] < 1 + len(prompts) and time.monotonic() < deadline:
            time.sleep(0.02)
        sock.close()  # the worker moves on to the three waiting requests, together
        for thread in threads:
            thread.join(timeout=60)
        status = health(url)
    assert [answers[i] for i in range(len(prompts))] == expected
    assert status["batches"] == 1 and status["completed"] == len(prompts) and status["cancelled"] == 1


def test_streams_advance_together(chat):
    expected = chat.generate([{"role": "user", "content": "hi"}], max_new_tokens=12).text
    with running(chat, ServerSettings(max_queue=4, max_streams=2)) as url:
        sock = open_stream(url, ask("Tell me everything.", stream=True, max_tokens=20_000, min_tokens=20_000))
        with httpx.stream("POST", url + "/v1/chat/completions", json=ask("hi", stream=True), timeout=30) as response:
            assert streamed_text(response) == expected  # answered while the long one still runs
        status = health(url)
        assert status["admitted"] == 1 and status["completed"] == 1
        sock.close()


def test_client_gone_before_its_answer_cancels_it(chat):
    with running(chat, ServerSettings(max_queue=2)) as url:
        address = urlparse(url)
        payload = json.dumps(ask("Tell me everything.", max_tokens=20_000, min_tokens=20_000)).encode()
        with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
            )
            deadline = time.monotonic() + 10
            while health(url)["admitted"] == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        started = time.monotonic()  # the non-streaming client hung up while its answer was generated
        while health(url)["admitted"] and time.monotonic() - started < 20:
            time.sleep(0.05)
        status = health(url)
        assert status["admitted"] == 0 and status["cancelled"] == 1 and status["completed"] == 0
        assert time.monotonic() - started < 10
