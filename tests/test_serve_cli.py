"""`minicpmv serve` as a user runs it: the README's serve, curl and openai-client commands, a
clean stop on Ctrl-C, and bad flags refused with exit code 2."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("openai")

from minicpmv.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MINICPMV = [sys.executable, "-m", "minicpmv"]


def readme_block(language: str, containing: str) -> str:
    return next(b for b in re.findall(rf"```{language}\n(.*?)```", README, flags=re.S) if containing in b)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not become healthy")


def test_readme_serve_curl_and_openai_client():
    block = readme_block("sh", "minicpmv serve")
    serve_line, curl_line = [line for line in block.splitlines() if line.strip()]
    port = free_port()
    serve = shlex.split(serve_line.replace("8080", str(port)))
    assert serve[:2] == ["minicpmv", "serve"]
    # SIGINT as from a terminal, even when this suite runs in the background (which ignores it)
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    process = subprocess.Popen(
        MINICPMV + serve[1:], cwd=ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
        curl = subprocess.run(
            shlex.split(curl_line.replace("8080", str(port))), capture_output=True, text=True, timeout=60, check=True
        )
        answer = json.loads(curl.stdout)
        assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] <= 8
        snippet = readme_block("python", "from openai import OpenAI").replace("8080", str(port))
        client = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stderr
        assert client.stdout.strip() and "None" not in client.stdout  # the answer's text only
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert "minicpmv serve: checkpoint at http://127.0.0.1:" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_port_in_use_exits_2(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "-m", "tests/fixtures/reference/minicpmv26_tiny/checkpoint", "--port", str(port)])
    assert code == 2
    assert f"minicpmv serve: error: cannot serve on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, words",
    [
        (["-m", "/no/such/checkpoint"], "/no/such/checkpoint"),
        (
            ["-m", "tests/fixtures/reference/minicpmv26_tiny/checkpoint", "--allow-local-images", "/no/such/dir"],
            "--allow-local-images",
        ),
        (["-m", "tests/fixtures/reference/minicpmv26_tiny/checkpoint", "--max-queue", "0"], "--max-queue"),
    ],
)
def test_bad_flags_exit_2(flags, words, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["serve", *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("minicpmv serve: error:") and words in error and error.count("\n") == 1


def test_serve_help_documents_the_flags():
    result = subprocess.run(
        MINICPMV + ["serve", "--help"], capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "200"}
    )
    for flag in ("--host", "--port", "--api-key", "--max-queue", "--allow-remote-images", "--allow-local-images"):
        assert flag in result.stdout
