"""Image input users can trust: paths, bytes, base64 `data:` URLs, file objects or PIL images in;
an RGB PIL image out, or an `ImageError` whose one-line message names the input and the problem.

Decoding is done in two steps so that a decompression bomb is refused from its header, before a
single pixel is allocated.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import threading
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError

# Pillow's own warning threshold (~179 MP, about 0.5 GB of RGB pixels). Our limit replaces
# Pillow's while an image is opened (a larger one, or None, really admits larger images).
DEFAULT_MAX_PIXELS = 178_956_970
_PILLOW_LIMIT = threading.Lock()  # Image.MAX_IMAGE_PIXELS is a module global

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image

_DECODE_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    ValueError,
    SyntaxError,  # Pillow raises it for some malformed headers
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    MemoryError,
)


def describe_source(source: object) -> str:
    """Short human description of an image input, for error messages."""
    if isinstance(source, Image.Image):
        return f"PIL image {source.width}x{source.height} ({source.mode})"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"image bytes ({len(source)} bytes)"
    if isinstance(source, str) and source[:5].lower() == "data:":
        return f"data URL ({len(source)} chars)"
    if isinstance(source, (str, os.PathLike)):
        return shorten(str(source))
    return type(source).__name__


def shorten(text: str, limit: int = 120) -> str:
    """`text`, or its start and length when longer than `limit` (a message must stay one line)."""
    text = text.replace("\n", " ").replace("\0", "\\0")
    return text if len(text) <= limit else f"{text[: limit - 40]}... ({len(text)} chars)"


def load_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open any supported image input and return a fully decoded RGB image.

    EXIF orientation is applied, so the model sees the photo the way a viewer shows it. Every
    mode (RGBA, LA, P, CMYK, I;16, 1, ...) is converted with `Image.convert("RGB")` as the
    official processor does: alpha is dropped, not composited.

    Args:
        source: a path, raw bytes, a `data:image/...;base64,` URL, a binary file object or a PIL
            image. Remote `http(s)://` URLs are refused: this package never fetches.
        max_pixels: largest accepted width*height, checked before decoding; None for no limit
            beyond Pillow's own.
    Raises:
        ImageError: the input is missing, empty, truncated, corrupt, of an unknown format or type,
            or larger than `max_pixels`.
    """
    return decode_image(open_image(source, max_pixels), describe_source(source))


def open_image(source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image with only its header read (`.size` known, pixels not decoded), so that a caller
    can budget pixels across several images before decoding any. ImageError as load_image."""
    name = describe_source(source)
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels, name)
        return source
    return _open(source, name, max_pixels)


def decode_image(image: Image.Image, name: str = "image") -> Image.Image:
    """An opened image decoded to RGB, EXIF orientation applied (see load_image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency and bomb warnings: handled here
            image.load()
            image = _apply_exif_orientation(image)
            return image.convert("RGB")
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{name}: cannot decode image ({_reason(exc)})") from None


def _open(source: ImageSource, name: str, max_pixels: int | None) -> Image.Image:
    stream = _as_stream(source, name)
    try:
        with warnings.catch_warnings(), _PILLOW_LIMIT:
            warnings.simplefilter("ignore")
            pillows = Image.MAX_IMAGE_PIXELS
            # Pillow refuses twice its own limit at open; ours is checked below instead
            Image.MAX_IMAGE_PIXELS = None if max_pixels is None or pillows is None else max(pillows, max_pixels)
            try:
                image = Image.open(stream)
            finally:
                Image.MAX_IMAGE_PIXELS = pillows
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name}: image too large ({_reason(exc)})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image or an unknown image format") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{name}: cannot read image ({_reason(exc)})") from None
    _check_size(image.size, max_pixels, name)
    return image


def _as_stream(source: ImageSource, name: str) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(_non_empty(bytes(source), name))
    if isinstance(source, str) and source[:5].lower() == "data:":  # schemes are case-insensitive
        return io.BytesIO(_non_empty(decode_data_url(source), name))
    if isinstance(source, str) and source.split(":", 1)[0].lower() in ("http", "https", "ftp"):
        raise ImageError(f"{name}: remote image URLs are not fetched; download the file first")
    if isinstance(source, (str, os.PathLike)):
        return io.BytesIO(_non_empty(_read_file(Path(source), name), name))
    if hasattr(source, "read"):
        try:
            return io.BytesIO(_non_empty(source.read(), name))
        except OSError as exc:
            raise ImageError(f"{name}: cannot read ({_reason(exc)})") from None
    raise ImageError(f"{name}: unsupported image input type; give a path, bytes, data URL or PIL image")


def _read_file(path: Path, name: str) -> bytes:
    """A regular file's bytes; a FIFO or device is refused, not read (a read could block forever)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory, not an image file") from None
    except ValueError:  # a NUL byte in the name
        raise ImageError(f"{name}: not a valid file name") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot read file ({_reason(exc)})") from None
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        raise ImageError(
            f"{name}: is a directory, not an image file" if stat.S_ISDIR(kind) else f"{name}: not a regular file"
        )
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read()
        except OSError as exc:
            raise ImageError(f"{name}: cannot read file ({_reason(exc)})") from None


def decode_data_url(url: str) -> bytes:
    """Bytes of a `data:[<mime>][;base64],<payload>` URL; only base64 image payloads are accepted."""
    name = describe_source(url)
    header, sep, payload = url.partition(",")
    if not sep:
        raise ImageError(f"{name}: malformed data URL (no ',' before the payload)")
    params = header[len("data:") :].split(";")  # the scheme is "data:" in any case
    mime = params[0].strip().lower()
    if mime and not mime.startswith("image/"):
        raise ImageError(f"{name}: data URL has media type {mime!r}, expected image/*")
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise ImageError(f"{name}: data URL is not base64-encoded")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{name}: invalid base64 payload in data URL") from None


def _non_empty(data: bytes, name: str) -> bytes:
    if not data:
        raise ImageError(f"{name}: empty image data (0 bytes)")
    return data


def _check_size(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{name}: image too large ({width}x{height} = {width * height} pixels, limit {max_pixels})")


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    # A damaged EXIF block must not make a readable image unusable: keep the stored orientation.
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - any EXIF parsing failure means "no orientation"
        return image


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
