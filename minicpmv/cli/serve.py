"""`minicpmv serve`: the OpenAI-compatible API and a web chat page for one model."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from ..errors import ConfigError
from .options import add_model_options, load_model


def serve(args: argparse.Namespace) -> None:
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
    local_dir = Path(args.allow_local_images) if args.allow_local_images else None
    if local_dir is not None and not local_dir.is_dir():
        raise ConfigError(f"--allow-local-images: {local_dir} is not a folder")
    check_server_flags(args)
    chat_model = load_model(args)
    policy = ImagePolicy(max_images=args.max_images, max_pixels=args.max_image_pixels,
                         max_request_pixels=args.max_request_pixels, allow_remote=args.allow_remote_images,
                         local_dir=local_dir)
    settings = ServerSettings(model_name=args.model_name or Path(args.model).resolve().name,
                              api_key=args.api_key or os.environ.get("MINICPMV_API_KEY") or None,
                              max_queue=args.max_queue, max_batch=args.max_batch,
                              max_streams=args.max_streams, max_body_bytes=int(args.max_body_mb * (1 << 20)),
                              images=policy, max_server_pixels=args.max_server_pixels,
                              allowed_hosts=allowed_hosts(args.host, args.allowed_hosts),
                              head_timeout_s=args.request_timeout, body_timeout_s=6 * args.request_timeout,
                              max_connections=args.max_connections, share_feature_cache=args.share_image_cache)

    def announce() -> None:
        print(f"minicpmv serve: {settings.model_name} at http://{args.host}:{args.port}/ "
              f"(load {chat_model.load_seconds:.2f} s)", file=sys.stderr, flush=True)

    serve_on_main_thread(chat_model, settings, args.host, args.port, args.log_level, on_ready=announce)


def check_server_flags(args: argparse.Namespace) -> None:
    """ConfigError naming the first flag out of range (before the model loads)."""
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    for flag in ("max_queue", "max_batch", "max_streams", "max_image_pixels", "max_request_pixels",
                 "max_server_pixels", "max_body_mb", "request_timeout", "max_connections"):
        value = getattr(args, flag)
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.max_images < 0:
        raise ConfigError(f"--max-images must be 0 or more, got {args.max_images}")


def allowed_hosts(host: str, extra: str | None) -> tuple[str, ...] | None:
    """Loopback names, the address served on (unless a wildcard) and the --allowed-hosts names;
    None when '*' is among them."""
    from ..serving.app import LOOPBACK_HOSTS

    names = [*LOOPBACK_HOSTS, *([host] if host not in ("0.0.0.0", "::", "") else []),
             *(name.strip() for name in (extra or "").split(",") if name.strip())]
    return None if "*" in names else tuple(names)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="OpenAI-compatible API server and web chat page",
                                   description=serve.__doc__.split("\n\n")[0])
    add_model_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/ requests (or set "
                                          "MINICPMV_API_KEY: an argument is visible to other users in `ps`)")
    parser.add_argument("--allowed-hosts", metavar="NAMES",
                        help="comma-separated Host names to answer besides loopback and --host (e.g. the machine's "
                             "LAN name when serving on 0.0.0.0); '*' answers any")
    parser.add_argument("--model-name", help="model id in the API (default: the checkpoint folder's name)")
    parser.add_argument("--max-queue", type=int, default=16, help="requests admitted at once; more get 429 (default 16)")
    parser.add_argument("--max-batch", type=int, default=1,
                        help="decode up to N waiting greedy non-streamed requests as one batch: more throughput, "
                             "but rounding differs from one at a time and can flip near-tie tokens (default 1)")
    parser.add_argument("--max-streams", type=int, default=4,
                        help="answers generated at once, a token of each in turn (default 4; 1 with "
                             "--low-memory or --llm-gguf)")
    parser.add_argument("--max-images", type=int, default=16, help="images per request (default 16)")
    parser.add_argument("--max-image-pixels", type=int, default=6000 * 6000,
                        help="pixels per image, checked before decoding (default 36000000)")
    parser.add_argument("--max-request-pixels", type=int, default=64_000_000,
                        help="pixels of all images of one request, checked before decoding (default 64000000)")
    parser.add_argument("--max-server-pixels", type=int, default=256_000_000,
                        help="pixels of the images all admitted requests hold; more gets 429 (default 256000000)")
    parser.add_argument("--max-body-mb", type=float, default=32.0, help="request body limit in MiB (default 32)")
    parser.add_argument("--request-timeout", type=float, default=10.0,
                        help="seconds a client has to send a request head, and 6x that for its body (default 10)")
    parser.add_argument("--max-connections", type=int, default=256,
                        help="open connections; more are answered 503 and closed (default 256)")
    parser.add_argument("--share-image-cache", action="store_true",
                        help="reuse image features across requests (faster repeated turns; lets a client tell by "
                             "timing which images others sent, so only when all clients are trusted)")
    parser.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs")
    parser.add_argument("--allow-local-images", metavar="DIR", help="read image paths, confined to DIR")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(run=lambda args: serve(args))
