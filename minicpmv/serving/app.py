"""The HTTP layer: FastAPI routes for the OpenAI chat-completions API, health, model list and
the web chat page. Everything that can be refused is refused here, before the model's queue,
with OpenAI's error shape; the model itself only ever sees valid, decoded input."""

from __future__ import annotations

import asyncio
import hmac
import json
import signal
import socket
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..errors import ConfigError
from ..processing.image_io import shorten
from . import limits, protocol
from .images import ImagePolicy, to_chat_messages
from .protocol import APIError, ChatCompletionRequest
from .worker import Job, ModelWorker


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


@dataclass
class ServerSettings:
    model_name: str = "minicpmv"
    api_key: str | None = None
    max_queue: int = limits.MAX_QUEUE
    max_batch: int = limits.MAX_BATCH
    max_streams: int = limits.MAX_STREAMS
    max_body_bytes: int = int(limits.MAX_BODY_MB * (1 << 20))
    images: ImagePolicy = field(default_factory=ImagePolicy)
    max_server_pixels: int | None = limits.MAX_SERVER_PIXELS
    allowed_hosts: tuple[str, ...] | None = limits.LOOPBACK_HOSTS  # None: any Host header
    head_timeout_s: float = limits.HEAD_TIMEOUT_S
    body_timeout_s: float = limits.BODY_TIMEOUT_S
    max_connections: int = limits.MAX_CONNECTIONS
    # image features reused across requests: faster repeated turns, but one client could time
    # another's images (a hit is 30x faster), so off unless every client is trusted
    share_feature_cache: bool = False
    thinking: bool = False  # 4.5: think unless a request's chat_template_kwargs.enable_thinking says not
    cors_origins: tuple[str, ...] = ()  # web origins whose pages may call the API (CORS)


def create_app(chat, settings: ServerSettings | None = None, start_worker: bool = True) -> FastAPI:
    """The server for one loaded `ChatModel`. Its worker (`app.state.worker`) starts in a thread
    now, or, with `start_worker=False`, runs wherever the caller calls `worker.run()`."""
    settings = settings or ServerSettings()
    worker = ModelWorker(chat, settings.max_queue, settings.max_batch, settings.max_streams, settings.max_server_pixels)
    if not settings.share_feature_cache:
        chat.feature_cache_size = 0
    if start_worker:
        worker.start()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.close()

    app = FastAPI(title="minicpmv", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.worker, app.state.settings = worker, settings
    _add_error_handlers(app)
    _add_request_checks(app, settings)
    _add_cors(app, settings.cors_origins)
    started = int(time.time())

    async def require_api_key(request: Request) -> None:
        if settings.api_key:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.api_key}".encode()):
                raise APIError(
                    401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'", code="invalid_api_key"
                )

    api = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])

    @app.get("/", response_class=HTMLResponse)
    async def web_page():
        return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, **worker.status()}

    _add_metrics(app, worker, settings.model_name)

    @api.get("/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": settings.model_name,
                    "object": "model",
                    "created": started,
                    "owned_by": "minicpmv",
                    "context_length": worker.context,
                }
            ],
        }

    @api.post("/chat/completions")
    async def chat_completions(request: Request):
        return await _answer(request, worker, settings)

    app.include_router(api)
    return app


def _add_cors(app: FastAPI, origins: tuple[str, ...]) -> None:
    """Added last, so it runs first: a preflight gets its answer before any other check."""
    if not origins:
        return
    from fastapi.middleware.cors import CORSMiddleware

    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
    )


def _add_metrics(app: FastAPI, worker: ModelWorker, model_name: str) -> None:
    """GET /metrics (Prometheus text format); a 501 that says why where prometheus-client is missing."""
    try:
        from .metrics import ServerMetrics

        metrics = ServerMetrics(worker, model_name)
    except ImportError:
        metrics = None

    @app.get("/metrics")
    async def prometheus_metrics():
        if metrics is None:
            raise APIError(501, "metrics need prometheus-client: pip install 'minicpmv[serve]'", code="not_implemented")
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


async def _answer(request: Request, worker: ModelWorker, settings: ServerSettings):
    body = await _read_body(request, settings.max_body_bytes, settings.body_timeout_s)
    parsed = protocol.parse_request(body)
    options, limit = _options(parsed, worker.context, settings.thinking)
    ticket = worker.admit()  # before any image is decoded: a full server answers 429 at once
    try:
        # decoding images is slow and blocking: off the event loop
        messages = await run_in_threadpool(
            to_chat_messages, parsed, settings.images, lambda pixels: worker.reserve_pixels(ticket, pixels)
        )
    except BaseException:
        worker.release(ticket)
        raise
    job = Job(messages, options, asyncio.get_running_loop(), limit, parsed.stream, ticket=ticket)
    worker.submit(job)
    try:
        kind, payload = await _next_event(job, request)
        if kind == "error":
            raise payload
        request_id = protocol.completion_id()
        if parsed.stream:
            include_usage = bool(parsed.stream_options and parsed.stream_options.include_usage)
            decode = worker.chat.tokenizer.decode if "logprobs" in options else None
            events = _sse_events(
                job, request_id, settings.model_name, include_usage, options.get("thinking", False), decode
            )
            return StreamingResponse(
                events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            )
        while kind != "done":
            kind, payload = await _next_event(job, request)
            if kind == "error":
                raise payload
        decode = worker.chat.tokenizer.decode
        return protocol.completion(
            request_id, settings.model_name, payload, options.get("thinking", False), lambda i: decode([i])
        )
    except BaseException:  # refused, failed, or the handler itself cancelled: the job must not run on
        job.cancel()
        raise


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413, f"the request body is {declared} bytes, over the limit of {limit} bytes", code="body_too_large"
        )
    body = bytearray()
    deadline = time.monotonic() + timeout_s
    pieces = request.stream().__aiter__()
    while True:
        try:  # a client sending a byte now and then must not hold a connection for ever
            piece = await asyncio.wait_for(pieces.__anext__(), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            return bytes(body)
        except asyncio.TimeoutError:
            raise APIError(
                408, f"the request body did not arrive within {timeout_s:g} s", code="request_timeout"
            ) from None
        body += piece
        if len(body) > limit:
            raise APIError(413, f"the request body is over the limit of {limit} bytes", code="body_too_large")


def _options(request: ChatCompletionRequest, context: int, thinking: bool = False) -> tuple[dict, int | None]:
    """The generation options of a request, and its answer limit (checked against the context);
    `thinking` is the server's default for chat_template_kwargs.enable_thinking."""
    limit = request.answer_limit()
    if limit is not None and limit >= context:
        param = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
        raise APIError(
            400,
            f"{param}: {limit} is not below the model's context of {context} tokens",
            param,
            "context_length_exceeded",
        )
    options = {"stop": request.stop_strings()}
    for name, value in (
        ("max_new_tokens", limit),
        ("min_new_tokens", request.min_tokens),
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("top_k", request.top_k),
        ("repetition_penalty", request.repetition_penalty),
        ("seed", request.seed),
    ):
        if value is not None:
            options[name] = value
    if request.logprobs:
        options["logprobs"] = request.top_logprobs or 0
    elif request.top_logprobs:
        raise APIError(400, "top_logprobs: needs logprobs: true", "top_logprobs")
    if request.response_format and request.response_format.get("type") != "text":
        options["response_format"] = request.response_format
    if request.mm_processor_kwargs and request.mm_processor_kwargs.downsample_mode:
        options["downsample_mode"] = request.mm_processor_kwargs.downsample_mode
    asked = request.chat_template_kwargs.enable_thinking if request.chat_template_kwargs else None
    if asked if asked is not None else thinking:
        options["thinking"] = True
    return options, limit


async def _next_event(job: Job, request: Request, poll_s: float = 0.25):
    """The job's next event; meanwhile, a client that has gone away cancels the job (Starlette
    tells a plain endpoint nothing of a disconnect)."""
    getter = asyncio.ensure_future(job.events.get())
    while True:
        done, _ = await asyncio.wait({getter}, timeout=poll_s)
        if done:
            return getter.result()
        if await request.is_disconnected():
            getter.cancel()
            raise ClientGone()


async def _sse_events(job: Job, request_id: str, model: str, include_usage: bool, thinking: bool = False, decode=None):
    """OpenAI's chunk stream; leaving early (the client went away) cancels the generation. A
    thinking answer streams its think block as `reasoning_content` deltas, as vLLM does."""
    extra = {"usage": None} if include_usage else {}
    splitter = protocol.ReasoningStream() if thinking else None

    def deltas(text: str, final: bool = False) -> list[dict]:
        if splitter is None:
            return [{"content": text}] if text else []
        return [{name: piece} for name, piece in splitter.push(text, final)]

    def event(payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    try:
        yield event(protocol.chunk(request_id, model, {"role": "assistant", "content": ""}, **extra))
        while True:
            kind, payload = await job.events.get()
            if kind == "delta":
                text, logprobs = payload
                # with logprobs: the tokens behind this piece ride on its first chunk
                content = protocol.token_logprobs(logprobs, lambda i: decode([i])) if decode else None
                for delta in deltas(text):
                    yield event(protocol.chunk(request_id, model, delta, logprobs=content, **extra))
                    content = {"content": []} if decode else None
            elif kind == "done":
                for delta in deltas("", final=True):
                    yield event(protocol.chunk(request_id, model, delta, **extra))
                reason = protocol.finish_reason(payload.stopped_by)
                yield event(protocol.chunk(request_id, model, {}, reason, timings=protocol.timings(payload), **extra))
                if include_usage:
                    yield event(
                        protocol.chunk(
                            request_id, model, None, usage=protocol.usage(payload), timings=protocol.timings(payload)
                        )
                    )
                yield "data: [DONE]\n\n"
                return
            else:
                yield event(payload.body())
                return
    finally:
        job.cancel()


def _add_request_checks(app: FastAPI, settings: ServerSettings) -> None:
    """Refused before any route runs: a Host this server is not known by (a web page that pointed
    its own name at 127.0.0.1), and a POST body that is not declared JSON (a browser sends a
    cross-site text/plain or form POST without asking first; application/json it must ask for).
    A plain ASGI middleware: Starlette's BaseHTTPMiddleware would hide client disconnects from
    the routes, which cancel abandoned generations by them."""
    allowed = None if settings.allowed_hosts is None else {h.lower().strip("[]") for h in settings.allowed_hosts}

    def refusal(scope) -> APIError | None:
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if allowed is not None and "*" not in allowed:
            host = _host_name(headers.get("host", ""))
            if host not in allowed:
                return APIError(
                    400,
                    f"Host {shorten(host, 80)!r} is not one this server answers to; start it "
                    "with --allowed-hosts NAME to add a name",
                    code="host_not_allowed",
                )
        if scope["method"] == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                return APIError(
                    415,
                    f"Content-Type {shorten(media, 80) or '(none)'!r}: send the body as application/json",
                    code="unsupported_media_type",
                )
        return None

    class RequestChecks:
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            error = refusal(scope) if scope["type"] == "http" else None
            if error is None:
                return await self.inner(scope, receive, send)
            await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)

    app.add_middleware(RequestChecks)


def _host_name(header: str) -> str:
    """The name of a Host header without its port ("[::1]:8080" -> "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone):
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        error = APIError(
            exc.status_code,
            f"{request.method} {request.url.path}: {exc.detail}",
            kind="invalid_request_error" if exc.status_code < 500 else "server_error",
        )
        return JSONResponse(error.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(APIError(400, str(exc).splitlines()[0]).body(), status_code=400)


def serve_on_main_thread(
    chat, settings: ServerSettings, host: str, port: int, log_level: str = "warning", on_ready=None
) -> None:
    """Run the HTTP server in a background thread and the model worker on this (main) thread
    until Ctrl-C or SIGTERM; raises ConfigError if the address cannot be listened on."""
    import uvicorn

    from .connections import uvicorn_config

    try:  # bound here, so that a taken port is a one-line error and not a dead server thread
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise ConfigError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    app = create_app(chat, settings, start_worker=False)
    server = uvicorn.Server(uvicorn_config(app, settings, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="minicpmv-http", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise ConfigError(f"the HTTP server on {host}:{port} did not start")
        time.sleep(0.02)
    if on_ready is not None:
        on_ready()
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        app.state.worker.run()  # returns when the server shuts down
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.should_exit = True
        thread.join(timeout=10)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
