"""Image input: every supported kind of source, every mode, EXIF orientation, and at least 12
kinds of broken or hostile input, each an ImageError with a one-line message naming the input."""

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from minicpmv import ImageError, load_image
from minicpmv.cli import main


def png_bytes(size=(64, 48), mode="RGB", color=(200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(size=(200, 120), exif_orientation=None) -> bytes:
    buffer = io.BytesIO()
    image = Image.effect_noise(size, 50).convert("RGB")
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    image.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming width x height, with no pixel data at all."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")


def corrupt_png() -> bytes:
    data = bytearray(png_bytes())
    data[60:70] = b"\x00" * 10  # inside the compressed pixel stream
    return bytes(data)


# ---- accepted inputs ---------------------------------------------------------------------------


def test_path_bytes_data_url_file_object_and_pil(tmp_path):
    data = png_bytes((30, 20))
    path = tmp_path / "a.png"
    path.write_bytes(data)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    for source in [path, str(path), data, bytearray(data), url, io.BytesIO(data), Image.open(io.BytesIO(data))]:
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (30, 20)
        assert image.getpixel((0, 0)) == (200, 10, 10)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "I;16", "1", "L", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb_like_pil_convert(mode):
    original = Image.new(mode, (9, 7))
    image = load_image(original)
    assert image.mode == "RGB" and image.size == (9, 7)
    assert image.tobytes() == original.convert("RGB").tobytes()


def test_alpha_is_dropped_not_composited():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent
    assert load_image(rgba).getpixel((0, 0)) == (10, 20, 30)


def test_exif_orientation_is_applied():
    assert load_image(jpeg_bytes((200, 120))).size == (200, 120)
    assert load_image(jpeg_bytes((200, 120), exif_orientation=6)).size == (120, 200)  # rotated 90°


def test_first_frame_of_animated_gif():
    frames = [Image.new("P", (10, 10), i) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buffer.getvalue()).size == (10, 10)


# ---- refused inputs ----------------------------------------------------------------------------


def bad_inputs(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png_bytes((300, 300), color=(1, 2, 3))[:80])
    jpeg = jpeg_bytes()
    return {
        "missing file": (tmp_path / "nope.png", "no such file"),
        "directory": (tmp_path, "directory"),
        "empty file": (empty, "empty"),
        "empty bytes": (b"", "empty"),
        "text file named .png": (text, "not an image"),
        "truncated png": (truncated, "truncated"),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], "truncated"),
        "corrupt pixel stream": (corrupt_png(), "cannot decode"),
        "header without pixel data": (png_header_only(10, 10), "cannot decode"),
        "zero width": (png_header_only(0, 10), "not an image"),
        "random bytes": (bytes(range(256)) * 4, "not an image"),
        "unknown format (pdf)": (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "unknown image format"),
        "decompression bomb header": (png_header_only(60000, 60000), "too large"),
        "bad base64": ("data:image/png;base64,!!!not-base64!!!", "invalid base64"),
        "data URL of text": ("data:text/plain;base64," + base64.b64encode(b"hi").decode(), "text/plain"),
        "data URL not base64": ("data:image/png,rawbytes", "not base64"),
        "data URL without payload": ("data:image/png;base64", "malformed"),
        "remote URL": ("https://example.com/cat.png", "not fetched"),
        "wrong type": (12345, "unsupported image input type"),
    }


def test_at_least_12_kinds_of_bad_input_raise_clear_image_errors(tmp_path):
    cases = bad_inputs(tmp_path)
    assert len(cases) >= 12
    for label, (source, fragment) in cases.items():
        with pytest.raises(ImageError) as info:
            load_image(source)
        message = str(info.value)
        assert fragment in message, (label, message)
        assert "\n" not in message, label
        if isinstance(source, str) and not source.startswith("data:"):
            assert source in message, label


def test_configurable_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageError, match=r"too large \(640x480 = 307200 pixels, limit 100000\)"):
        load_image(png_bytes((640, 480)), max_pixels=100_000)
    assert load_image(png_bytes((640, 480)), max_pixels=None).size == (640, 480)
    with pytest.raises(ImageError, match="too large"):
        load_image(Image.new("RGB", (400, 400)), max_pixels=1000)


def test_cli_turns_image_errors_into_exit_code_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(jpeg_bytes()[:300])
    assert main(["inspect-image", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(bad) in err


def test_a_larger_limit_or_none_really_admits_images_past_pillows_own(tmp_path):
    """Pillow refuses images over twice its MAX_IMAGE_PIXELS at open; --max-pixels above that
    (or None) must still admit them, and Pillow's setting must be left as it was."""
    from minicpmv.processing.image_io import open_image

    path = tmp_path / "huge.png"
    Image.new("1", (20000, 20000)).save(path)  # 400 M pixels, a few kB: over 2 x 179 M
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="too large"):
        open_image(path)  # the default limit
    assert open_image(path, max_pixels=None).size == (20000, 20000)
    assert open_image(path, max_pixels=500_000_000).size == (20000, 20000)
    assert Image.MAX_IMAGE_PIXELS == before
