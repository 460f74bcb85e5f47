"""A real uvicorn server on a loopback port in a background thread, for tests that drive
`minicpmv serve`'s app over HTTP (the openai client, raw sockets, a browser)."""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from pathlib import Path

import uvicorn

from minicpmv.serving import ServerSettings, create_app, uvicorn_config

EXAMPLE = Path(__file__).resolve().parents[1] / "minicpmv" / "assets" / "example.png"


@contextlib.contextmanager
def running(chat, settings: ServerSettings | None = None):
    """Yield the base URL of a server for `chat`; stopped (and its worker ended) on exit."""
    settings = settings or ServerSettings()
    app = create_app(chat, settings)
    server = uvicorn.Server(uvicorn_config(app, settings, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def data_url(path: Path = EXAMPLE, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}
