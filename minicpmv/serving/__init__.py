"""OpenAI-compatible HTTP server and web chat page (`minicpmv serve`, the `serve` extra).

protocol: the wire format; images: the image-URL policy and pixel budget; worker: the one thread
that owns the model; connections: uvicorn's timeouts and connection cap; app: the FastAPI routes;
limits: the default limits. Depends on the chat API, never the other way round.
"""

import importlib

# imported on first use, so that `minicpmv.serving.limits` needs no FastAPI (the CLI reads it)
_LAZY = {
    "ServerSettings": "app",
    "create_app": "app",
    "serve_on_main_thread": "app",
    "uvicorn_config": "connections",
    "ImagePolicy": "images",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
