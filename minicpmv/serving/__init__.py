"""OpenAI-compatible HTTP server and web chat page (`minicpmv serve`, the `serve` extra).

protocol: the wire format; images: the image-URL policy and pixel budget; worker: the one thread
that owns the model; connections: uvicorn's timeouts and connection cap; app: the FastAPI routes;
limits: the default limits. Depends on the chat API, never the other way round.
"""

from ..lazy import lazy_getattr

# imported on first use, so that `minicpmv.serving.limits` needs no FastAPI (the CLI reads it)
_LAZY = {
    "ServerSettings": "app",
    "create_app": "app",
    "serve_on_main_thread": "app",
    "uvicorn_config": "connections",
    "ImagePolicy": "images",
}
__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
