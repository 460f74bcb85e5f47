"""`minicpmv serve`: the OpenAI-compatible API and a web chat page for one model."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..serving import limits
from .options import ModelFlags, add_model_options, load_model, wire


@dataclass
class ServerFlags:
    """serve's own flags (add_parser gives each one's meaning); the defaults are the server's."""

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    allowed_hosts: str | None = None
    model_name: str | None = None
    max_queue: int = limits.MAX_QUEUE
    max_batch: int = limits.MAX_BATCH
    max_streams: int = limits.MAX_STREAMS
    max_images: int = limits.MAX_IMAGES
    max_image_pixels: int = limits.MAX_IMAGE_PIXELS
    max_request_pixels: int = limits.MAX_REQUEST_PIXELS
    max_server_pixels: int = limits.MAX_SERVER_PIXELS
    max_body_mb: float = limits.MAX_BODY_MB
    request_timeout: float = limits.HEAD_TIMEOUT_S
    max_connections: int = limits.MAX_CONNECTIONS
    allow_remote_images: bool = False
    allow_local_images: str | None = None
    share_image_cache: bool = False
    thinking: bool = False
    cors: list[str] | None = None
    log_level: str = "warning"


def serve(server: ServerFlags, model: ModelFlags) -> None:
    """Serve a model over HTTP until interrupted.

    Endpoints: POST /v1/chat/completions (OpenAI format, streamed by server-sent events or not),
    GET /v1/models, GET /health, and a chat page at /. One worker thread answers requests in
    order; at most --max-queue are admitted at once and the next gets 429. Images come as
    data: URLs; http(s) URLs and local paths only with --allow-remote-images /
    --allow-local-images DIR. With --api-key (or MINICPMV_API_KEY), /v1/ requests need
    'Authorization: Bearer KEY'. Only requests whose Host is a loopback name, the --host address
    or an --allowed-hosts name are answered (a web page cannot reach a local server by pointing
    its own name at 127.0.0.1).
    """
    try:
        from ..serving import ImagePolicy, ServerSettings, serve_on_main_thread
    except ImportError as exc:
        raise ConfigError(f"serving needs the serve extra: pip install 'minicpmv[serve]' ({exc})") from None
    local_dir = Path(server.allow_local_images) if server.allow_local_images else None
    if local_dir is not None and not local_dir.is_dir():
        raise ConfigError(f"--allow-local-images: {local_dir} is not a folder")
    check_server_flags(server)
    chat_model = load_model(model)
    policy = ImagePolicy(
        max_images=server.max_images,
        max_pixels=server.max_image_pixels,
        max_request_pixels=server.max_request_pixels,
        allow_remote=server.allow_remote_images,
        local_dir=local_dir,
    )
    settings = ServerSettings(
        model_name=server.model_name or Path(model.model).resolve().name,
        api_key=server.api_key or os.environ.get("MINICPMV_API_KEY") or None,
        max_queue=server.max_queue,
        max_batch=server.max_batch,
        max_streams=server.max_streams,
        max_body_bytes=int(server.max_body_mb * (1 << 20)),
        images=policy,
        max_server_pixels=server.max_server_pixels,
        allowed_hosts=allowed_hosts(server.host, server.allowed_hosts),
        head_timeout_s=server.request_timeout,
        body_timeout_s=server.request_timeout * limits.BODY_TIMEOUT_S / limits.HEAD_TIMEOUT_S,
        max_connections=server.max_connections,
        share_feature_cache=server.share_image_cache,
        thinking=server.thinking,
        cors_origins=tuple(server.cors or ()),
    )

    def announce() -> None:
        print(
            f"minicpmv serve: {settings.model_name} at http://{server.host}:{server.port}/ "
            f"(load {chat_model.load_seconds:.2f} s): {chat_model.description}",
            file=sys.stderr,
            flush=True,
        )

    serve_on_main_thread(chat_model, settings, server.host, server.port, server.log_level, on_ready=announce)


def check_server_flags(flags: ServerFlags) -> None:
    """ConfigError naming the first flag out of range (before the model loads)."""
    if not 0 <= flags.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {flags.port}")
    for flag in (
        "max_queue",
        "max_batch",
        "max_streams",
        "max_image_pixels",
        "max_request_pixels",
        "max_server_pixels",
        "max_body_mb",
        "request_timeout",
        "max_connections",
    ):
        value = getattr(flags, flag)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if flags.max_images < 0:
        raise ConfigError(f"--max-images must be 0 or more, got {flags.max_images}")


def allowed_hosts(host: str, extra: str | None) -> tuple[str, ...] | None:
    """Loopback names, the address served on (unless a wildcard) and the --allowed-hosts names;
    None when '*' is among them."""
    names = [
        *limits.LOOPBACK_HOSTS,
        *([host] if host not in ("0.0.0.0", "::", "") else []),
        *(name.strip() for name in (extra or "").split(",") if name.strip()),
    ]
    return None if "*" in names else tuple(names)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="OpenAI-compatible API server and web chat page", description=serve.__doc__.split("\n\n")[0]
    )
    add_model_options(parser)
    defaults = ServerFlags()  # written once, in the dataclass
    parser.add_argument("--host", default=defaults.host, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port, help="port (default %(default)s)")
    parser.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on /v1/ requests (or set "
        "MINICPMV_API_KEY: an argument is visible to other users in `ps`)",
    )
    parser.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        help="comma-separated Host names to answer besides loopback and --host (e.g. the machine's "
        "LAN name when serving on 0.0.0.0); '*' answers any",
    )
    parser.add_argument(
        "--cors",
        action="append",
        metavar="ORIGIN",
        help="let web pages of this origin (e.g. https://app.example) call the API; repeatable",
    )
    parser.add_argument("--model-name", help="model id in the API (default: the checkpoint folder's name)")
    parser.add_argument(
        "--max-queue",
        type=int,
        default=defaults.max_queue,
        help="requests admitted at once; more get 429 (default %(default)s)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=defaults.max_batch,
        help="decode up to N waiting greedy non-streamed requests as one batch: more throughput, "
        "but rounding differs from one at a time and can flip near-tie tokens (default %(default)s)",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=defaults.max_streams,
        help="answers generated at once, a token of each in turn (default %(default)s; 1 with --low-memory or --llm-gguf)",
    )
    parser.add_argument(
        "--max-images", type=int, default=defaults.max_images, help="images per request (default %(default)s)"
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=defaults.max_image_pixels,
        help="pixels per image, checked before decoding (default %(default)s)",
    )
    parser.add_argument(
        "--max-request-pixels",
        type=int,
        default=defaults.max_request_pixels,
        help="pixels of all images of one request, checked before decoding (default %(default)s)",
    )
    parser.add_argument(
        "--max-server-pixels",
        type=int,
        default=defaults.max_server_pixels,
        help="pixels of the images all admitted requests hold; more gets 429 (default %(default)s)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=defaults.max_body_mb,
        help="request body limit in MiB (default %(default)s)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=defaults.request_timeout,
        help="seconds a client has to send a request head, and 6x that for its body (default %(default)s)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help="open connections; more are answered 503 and closed (default %(default)s)",
    )
    parser.add_argument(
        "--share-image-cache",
        action="store_true",
        help="reuse image features across requests (faster repeated turns; lets a client tell by "
        "timing which images others sent, so only when all clients are trusted)",
    )
    parser.add_argument(
        "--thinking",
        action="store_true",
        help="4.5: think by default (a request's chat_template_kwargs.enable_thinking decides per "
        "request); the think block comes back as reasoning_content",
    )
    parser.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs")
    parser.add_argument("--allow-local-images", metavar="DIR", help="read image paths, confined to DIR")
    parser.add_argument(
        "--log-level", default=defaults.log_level, choices=["critical", "error", "warning", "info", "debug"]
    )
    wire(parser, serve)
