"""The OpenAI chat-completions wire format: request models (strict types, unknown fields
ignored, as OpenAI's own server does), response and chunk builders, and the error shape."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

STRICT = ConfigDict(extra="ignore", strict=True)


class APIError(Exception):
    """A request the server refuses: HTTP status plus OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class ImageURL(BaseModel):
    model_config = STRICT
    url: str
    detail: str | None = None


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class ImageURLPart(BaseModel):
    model_config = STRICT
    type: Literal["image_url"]
    image_url: ImageURL | str  # the object form, or the bare-string form some clients send


ContentPart = Annotated[TextPart | ImageURLPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentPart]


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class ChatTemplateKwargs(BaseModel):
    model_config = STRICT
    enable_thinking: bool | None = None  # vLLM's switch for thinking models (4.5)


class MMProcessorKwargs(BaseModel):
    model_config = STRICT
    downsample_mode: Literal["16x", "4x"] | None = None  # vLLM's per-request switch (4.6/4.7)


class ChatCompletionRequest(BaseModel):
    model_config = STRICT
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # extensions other local servers (vLLM, llama.cpp) accept too
    min_tokens: int | None = Field(None, ge=0)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    chat_template_kwargs: ChatTemplateKwargs | None = None
    mm_processor_kwargs: MMProcessorKwargs | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: dict | None = None  # {"type": "text" | "json_object" | "json_schema", ...}
    # OpenAI fields not implemented here, kept so that a value that would matter is refused
    # (UNSUPPORTED) rather than silently dropped
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    logit_bias: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None

    def answer_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise APIError(400, "stop: at most 4 non-empty strings", "stop")
        return stops


_FIELDS = {
    name
    for model in (
        ImageURL,
        TextPart,
        ImageURLPart,
        ChatMessage,
        StreamOptions,
        ChatTemplateKwargs,
        ChatCompletionRequest,
    )
    for name in model.model_fields
}


# OpenAI request fields this server does not implement, with the values that mean "not used":
# any other value is refused (400 naming the field) rather than silently ignored. Other unknown
# fields (`user`, `metadata`, `store`, ...) change nothing about the answer and are ignored.
UNSUPPORTED = {
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
}


def parse_request(body: bytes) -> ChatCompletionRequest:
    """Validate a request body; the first problem becomes a one-line 400 naming the field."""
    try:
        request = ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None
    if request.n != 1:
        raise APIError(400, f"n: only n=1 is supported, got {request.n}", "n")
    for name, unused in UNSUPPORTED.items():
        value = getattr(request, name)
        if value not in unused:
            raise APIError(400, f"{name}: not supported by this server (got {_short(value)})", name)
    return request


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _validation_error(exc: ValidationError) -> APIError:
    errors = exc.errors(include_url=False)
    if errors[0]["type"] == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {errors[0]['ctx'].get('error', errors[0]['msg'])}")
    # a union reports one error per member; the deepest one is about what the client meant
    error = max(errors, key=lambda e: len(e["loc"]))
    path = []
    for part in error["loc"]:  # keep field names and list indices, not union member names
        if (isinstance(part, int) or part in _FIELDS) and (not path or path[-1] != part):
            path.append(part)
    param = ".".join(str(p) for p in path) or None
    return APIError(400, f"{param or 'body'}: {error['msg']}", param)


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def finish_reason(stopped_by: str) -> str:
    return "length" if stopped_by == "length" else "stop"


def usage(generation) -> dict:
    prompt, completion = len(generation.prompt_token_ids), len(generation.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def timings(generation) -> dict:
    """Our figures beside OpenAI's usage: image encoding, prefill and decode speed."""
    prompt, completion = len(generation.prompt_token_ids), len(generation.token_ids)
    return {
        "image_encode_ms": round(generation.image_seconds * 1000, 2),
        "image_tokens": generation.image_tokens,
        "prefill_ms": round(generation.prefill_seconds * 1000, 2),
        "prefill_tokens_per_second": round(prompt / generation.prefill_seconds, 2)
        if generation.prefill_seconds
        else 0.0,
        "decode_ms": round(generation.decode_seconds * 1000, 2),
        "decode_tokens_per_second": round(completion / generation.decode_seconds, 2)
        if generation.decode_seconds
        else 0.0,
    }


THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, content) of a thinking answer, split as the 4.5 chat template splits an
    assistant message it is given back; an answer cut before `</think>` is all reasoning."""
    if THINK_CLOSE not in text:
        return text.split(THINK_OPEN)[-1].lstrip("\n"), ""
    head, _, tail = text.partition(THINK_CLOSE)
    return head.rstrip("\n").split(THINK_OPEN)[-1].lstrip("\n"), tail.lstrip("\n")


class ReasoningStream:
    """Streamed deltas of a thinking answer -> (field, text) pieces: `reasoning_content` up to
    `</think>`, `content` after it, as vLLM's reasoning parser streams them. Each push splits the
    text so far with `split_reasoning` and sends what is new; a tail that may still change the
    split (newlines the split drops, a partial `<think>` or `</think>`) waits for more text."""

    def __init__(self):
        self.text = ""
        self.sent = {"reasoning_content": 0, "content": 0}

    def push(self, delta: str, final: bool = False) -> list[tuple[str, str]]:
        self.text += delta
        safe = self.text
        if not final:
            if THINK_OPEN.startswith(self.text.lstrip("\n")):
                return []
            safe = self.text[: len(self.text) - _held_back(self.text)]
        reasoning, content = split_reasoning(safe)
        pieces = []
        for name, value in (("reasoning_content", reasoning), ("content", content)):
            if len(value) > self.sent[name]:
                pieces.append((name, value[self.sent[name] :]))
                self.sent[name] = len(value)
        return pieces


def _held_back(text: str) -> int:
    """Characters at the end of `text` that may begin "</think>", with the newlines before it
    (the split drops them), or be trailing newlines."""
    stripped = text.rstrip("\n")
    for size in range(min(len(THINK_CLOSE) - 1, len(stripped)), 0, -1):
        if THINK_CLOSE.startswith(stripped[-size:]):
            return len(text) - len(stripped[:-size].rstrip("\n"))
    return len(text) - len(stripped)


def logprobs_content(generation, decode) -> dict | None:
    """OpenAI's choice.logprobs of an answer made with the logprobs option; `decode(id)` gives a
    token's text."""
    if generation.logprobs is None:
        return None
    return token_logprobs(
        [(token, lp, alternatives) for token, (lp, alternatives) in zip(generation.token_ids, generation.logprobs)],
        decode,
    )


def token_logprobs(entries, decode) -> dict:
    """OpenAI's {"content": [...]} of (token id, logprob, [(id, logprob), ...]) entries: a whole
    answer's, or a streamed piece's (TextStream.delta_logprobs)."""

    def entry(token: int, logprob: float) -> dict:
        text = decode(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {**entry(token, logprob), "top_logprobs": [entry(i, lp) for i, lp in alternatives]}
            for token, logprob, alternatives in entries
        ]
    }


def completion(request_id: str, model: str, generation, thinking: bool = False, decode=None) -> dict:
    message = {"role": "assistant", "content": generation.text}
    if thinking:
        message["reasoning_content"], message["content"] = split_reasoning(generation.text)
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": logprobs_content(generation, decode) if decode else None,
                "finish_reason": finish_reason(generation.stopped_by),
            }
        ],
        "usage": usage(generation),
        "timings": timings(generation),
    }


def chunk(
    request_id: str, model: str, delta: dict | None, finish: str | None = None, logprobs: dict | None = None, **extra
) -> dict:
    """One streamed chunk; `delta=None` is the usage chunk (no choices), as OpenAI sends it."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        **extra,
    }
