"""OpenAI-compatible HTTP server and web chat page (`minicpmv serve`, the `serve` extra).

protocol: the wire format; images: the image-URL policy and pixel budget; worker: the one thread
that owns the model; connections: uvicorn's timeouts and connection cap; app: the FastAPI routes. Depends on the chat API, never the other way round.
"""

from .app import ServerSettings, create_app, serve_on_main_thread
from .connections import uvicorn_config
from .images import ImagePolicy

__all__ = ["ImagePolicy", "ServerSettings", "create_app", "serve_on_main_thread", "uvicorn_config"]
