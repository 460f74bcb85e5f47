"""Messages -> prompt text, the way the official chat() builds it (docs/preprocessing.md).

Each message's content items are joined with "\\n", an image becoming the tag
`(<image>./</image>)`; 2.5 and 2.6 then render the checkpoint's own jinja `chat_template`,
2.0 uses its hand-built `<用户>`/`<AI>` format. Images come back in tag order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from PIL import Image

from ..errors import PromptError
from ..versions import facts
from .placeholders import IMAGE_TAG

ROLES = ("system", "user", "assistant")
MINICPM2_USER, MINICPM2_ASSISTANT = "<用户>", "<AI>"


@dataclass
class ImagePart:
    """An image item of a message; `source` is anything `load_image` accepts."""

    source: object


@dataclass
class Message:
    role: str
    parts: list  # str | ImagePart


def normalize_messages(messages: list, system_prompt: str | None = None) -> list[Message]:
    """Validate chat messages and split their content into text and image parts.

    Accepted content: a string, or a list whose items are strings, PIL images, bytes, paths
    (pathlib.Path), `{"type": "text", "text": ...}`, `{"type": "image", "image": src}`,
    `{"type": "image_url", "image_url": {"url": ...} | "..."}` or `{"image": src}`.
    """
    if not isinstance(messages, list) or not messages:
        raise PromptError("messages must be a non-empty list of {'role', 'content'} dicts")
    result = [Message("system", [system_prompt])] if system_prompt else []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise PromptError(f"message {index}: expected a dict with 'role' and 'content'")
        role = message["role"]
        if role not in ROLES:
            raise PromptError(f"message {index}: unknown role {role!r}; expected one of {ROLES}")
        content = message["content"]
        items = content if isinstance(content, list) else [content]
        result.append(Message(role, [_to_part(item, index) for item in items]))
    first_turn = next((m for m in result if m.role != "system"), None)
    if first_turn is None or first_turn.role != "user":
        raise PromptError("the first non-system message must come from the user")
    return result


def _to_part(item, index: int):
    if isinstance(item, str):
        return item
    if isinstance(item, (Image.Image, bytes, bytearray, Path)):
        return ImagePart(item)
    if isinstance(item, dict):
        kind = item.get("type")
        if kind == "text" and isinstance(item.get("text"), str):
            return item["text"]
        if kind == "image_url":
            url = item.get("image_url")
            return ImagePart(url.get("url") if isinstance(url, dict) else url)
        if kind in ("image", None) and "image" in item:
            return ImagePart(item["image"])
    raise PromptError(f"message {index}: unsupported content item {_short(item)}")


def _short(item) -> str:
    text = repr(item)
    return text if len(text) <= 80 else text[:77] + "..."


def message_images(messages: list[Message]) -> list:
    """Image sources in prompt order."""
    return [part.source for m in messages for part in m.parts if isinstance(part, ImagePart)]


def join_parts(parts: list, newline_after_image: bool = True) -> str:
    """Content items joined by "\\n", images as tags. 2.0 placeholders end in their own newline."""
    text = ""
    for i, part in enumerate(parts):
        if i > 0 and (newline_after_image or not isinstance(parts[i - 1], ImagePart)):
            text += "\n"
        text += IMAGE_TAG if isinstance(part, ImagePart) else part
    return text


def render_prompt(
    messages: list[Message],
    version: str,
    chat_template: str | None,
    special_tokens: dict,
    add_generation_prompt: bool = True,
    thinking: bool | None = None,
) -> str:
    """Prompt text with image tags, before placeholder expansion and tokenisation.

    thinking: the template's `enable_thinking` (4.5: False closes an empty think block after the
    assistant opener, True opens one, None leaves it undefined: nothing is added); a model
    without a thinking mode refuses True.
    """
    variables = {}
    if facts(version).thinking:
        if thinking is not None:
            variables["enable_thinking"] = bool(thinking)
    elif thinking:
        raise PromptError(f"MiniCPM-V {version} has no thinking mode")
    if facts(version).chat_format == "minicpm2":
        return _render_minicpm2(messages, add_generation_prompt)
    if not chat_template:
        raise PromptError("the tokenizer has no chat_template; cannot build a chat prompt")
    rendered = [{"role": m.role, "content": join_parts(m.parts)} for m in messages]
    try:
        template = _compile_template(chat_template)
        pieces, size = [], 0
        # a template is code from the checkpoint: its output is capped, and whatever it raises
        # (the sandbox's OverflowError for a huge range, a TypeError) is the template's failure
        for piece in template.generate(
            messages=rendered, add_generation_prompt=add_generation_prompt, **special_tokens, **variables
        ):
            size += len(piece)
            if size > MAX_RENDERED_CHARS + sum(len(m["content"]) for m in rendered):
                raise TemplateError(f"its output passed {MAX_RENDERED_CHARS} characters beyond the messages")
            pieces.append(piece)
        return "".join(pieces)
    except (TemplateError, ArithmeticError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise PromptError(f"chat_template failed to render: {' '.join(str(exc).split())[:200]}") from None


MAX_RENDERED_CHARS = 1 << 20


def _render_minicpm2(messages: list[Message], add_generation_prompt: bool) -> str:
    """2.0 has no template: `<用户>`/`<AI>` before each turn, a trailing `<AI>`.

    2.0 has no system role; a system prompt is written as plain text before the first turn.
    """
    text = ""
    for m in messages:
        if m.role != "system":
            text += MINICPM2_USER if m.role == "user" else MINICPM2_ASSISTANT
        text += join_parts(m.parts, newline_after_image=False)
    return text + (MINICPM2_ASSISTANT if add_generation_prompt else "")


def _raise_exception(message: str):
    raise TemplateError(message)


@lru_cache(maxsize=8)
def _compile_template(source: str):
    # The settings transformers renders chat templates with, so the text is identical.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
