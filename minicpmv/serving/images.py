"""Turning the `image_url` parts of a request into decoded images, under the server's policy:
`data:` URLs always; http(s) URLs only when allowed (a server must not fetch arbitrary URLs
for anyone who can reach it); local paths only inside one allowed folder.

Pixels are budgeted before anything is decoded: every image's header is read first, the request's
total is checked against `max_request_pixels`, and the server's share is reserved (the caller's
`reserve`, which can refuse with a 429); only then are the images decoded. A few kilobytes of
single-colour PNG can stand for gigabytes of pixels."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError
from ..processing.image_io import decode_image, open_image, shorten
from . import limits
from .protocol import APIError, ChatCompletionRequest, ImageURL, TextPart

FETCH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ImagePolicy:
    max_images: int = limits.MAX_IMAGES
    max_pixels: int = limits.MAX_IMAGE_PIXELS
    max_request_pixels: int = limits.MAX_REQUEST_PIXELS
    max_bytes: int = 32 << 20  # per fetched or read file
    allow_remote: bool = False
    local_dir: Path | None = None


def to_chat_messages(request: ChatCompletionRequest, policy: ImagePolicy, reserve=None) -> list[dict]:
    """The request's messages in `ChatModel.chat` form, every image decoded (or a 400). `reserve`
    (pixels -> None, may raise) is called with the request's pixel total before any decoding."""
    count = sum(
        1
        for m in request.messages
        if isinstance(m.content, list)
        for part in m.content
        if not isinstance(part, TextPart)
    )
    if count > policy.max_images:
        raise APIError(
            400,
            f"messages: {count} images; the limit is {policy.max_images} per request",
            "messages",
            "too_many_images",
        )
    messages, opened, total = [], [], 0
    for index, message in enumerate(request.messages):
        if isinstance(message.content, str):
            messages.append({"role": message.role, "content": message.content})
            continue
        content = []
        for number, part in enumerate(message.content):
            if isinstance(part, TextPart):
                content.append(part.text)
            else:
                url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
                param = f"messages.{index}.content.{number}.image_url"
                opened.append((content, len(content), param))
                content.append(open_request_image(url, policy, param))
                total += content[-1].width * content[-1].height
        messages.append({"role": message.role, "content": content})
    if total > policy.max_request_pixels:
        raise APIError(
            400,
            f"messages: the images hold {total} pixels together; the limit is {policy.max_request_pixels} per request",
            "messages",
            "images_too_large",
        )
    if reserve is not None:
        reserve(total)
    for content, slot, param in opened:
        try:
            content[slot] = decode_image(content[slot], param)
        except ImageError as exc:
            raise APIError(400, str(exc), param, "invalid_image") from None
    return messages


def open_request_image(url: str, policy: ImagePolicy, param: str):
    """Read one image reference's header (size known, nothing decoded); every refusal is a 400
    naming `param`."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    try:
        if scheme == "data":
            return open_image(url, policy.max_pixels)
        if scheme in ("http", "https"):
            if not policy.allow_remote:
                raise APIError(
                    400,
                    f"{param}: remote image URLs are refused by this server (start it with --allow-remote-images)",
                    param,
                    "remote_image_refused",
                )
            return open_image(_fetch(url, policy.max_bytes, param), policy.max_pixels)
        if scheme == "file" or not scheme or len(scheme) == 1:  # a path (len 1: a Windows drive letter)
            return open_image(_local_path(url, policy, param), policy.max_pixels)
    except ImageError as exc:
        raise APIError(400, f"{param}: {exc}", param, "invalid_image") from None
    raise APIError(
        400, f"{param}: unsupported URL scheme {shorten(scheme, 40)!r}; use a data: URL", param, "invalid_image"
    )


def _local_path(url: str, policy: ImagePolicy, param: str) -> Path:
    if policy.local_dir is None:
        raise APIError(
            400,
            f"{param}: local image paths are refused by this server (start it with --allow-local-images DIR)",
            param,
            "local_image_refused",
        )
    root = policy.local_dir.resolve()
    try:
        path = (root / url.removeprefix("file://")).resolve()  # an absolute path replaces root here
        inside = path.is_relative_to(root)
        size = path.stat().st_size if inside and path.is_file() else 0
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system
        raise APIError(400, f"{param}: {shorten(url)} is not a usable file name", param, "invalid_image") from None
    if not inside:
        raise APIError(
            400,
            f"{param}: {shorten(url)} is outside the folder this server may read images from",
            param,
            "local_image_refused",
        )
    if size > policy.max_bytes:
        raise APIError(400, f"{param}: {shorten(url)} is larger than {policy.max_bytes} bytes", param, "invalid_image")
    return path


def _fetch(url: str, max_bytes: int, param: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 - opt-in
            data = response.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise APIError(400, f"{param}: cannot fetch {shorten(url)} ({exc})", param, "invalid_image") from None
    if len(data) > max_bytes:
        raise APIError(400, f"{param}: {shorten(url)} is larger than {max_bytes} bytes", param, "invalid_image")
    return data
