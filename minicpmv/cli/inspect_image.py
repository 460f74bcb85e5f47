"""`minicpmv inspect-image`: how each image is sliced and how many tokens it costs."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from ..hub import resolve_model
from ..processing.config import ProcessorConfig
from ..processing.image_io import DEFAULT_MAX_PIXELS, load_image
from ..processing.report import format_report, image_report
from ..versions import SUPPORTED_VERSIONS
from .options import wire


def inspect_image(
    images: list[str],
    version: str = "2.6",
    model: str | None = None,
    max_slice_nums: int | None = None,
    image_index: int = 0,
    use_image_id: bool = True,
    as_json: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    downsample_mode: str | None = None,
) -> list[dict]:
    """Print, for each image, the grid, overview size, slice size, crop count, tgt_sizes and
    image-token count of the official MiniCPM-V preprocessing; return the reports.

    Args:
        images: image files, read like any model input (EXIF orientation applied).
        version: a version's official settings ("1.0" ... "4.7"), unless `model` is given.
        model: a checkpoint folder whose processor settings to use instead.
        max_slice_nums: per-call slice cap (default: the checkpoint's, 9 officially).
        image_index: the image's 0-based index within its prompt, written in `<image_id>` (2.6);
            every image given is inspected as that image of its prompt.
        use_image_id: 2.6 / 4.5: write the `<image_id>` prefix.
        as_json: one JSON object per image and line, with the keys of the reference slicing.json.
        max_pixels: refuse images larger than this many pixels.
        downsample_mode: 4.6/4.7: "16x" or "4x" (default: the checkpoint's, else 16x).
    """
    config = ProcessorConfig.from_pretrained(resolve_model(model)) if model else ProcessorConfig.defaults(version)
    if downsample_mode is not None:
        config = replace(config, downsample_mode=downsample_mode)  # validated: a ConfigError if it has none
    reports = []
    for path in images:
        image = load_image(path, max_pixels)
        plan = config.plan(image.size, max_slice_nums)
        report = image_report(plan, config, image_index, use_image_id)
        reports.append(report)
        print(json.dumps({"image": path, **report}) if as_json else format_report(path, report), flush=True)
    return reports


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect-image",
        help="show how images are sliced and how many image tokens they cost",
        description=inspect_image.__doc__.split("\n\n")[0],
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument(
        "--version",
        dest="version",
        choices=SUPPORTED_VERSIONS,
        default="2.6",
        help="official settings of this MiniCPM-V version (default 2.6)",
    )
    parser.add_argument("-m", "--model", help="checkpoint folder whose processor settings to use")
    parser.add_argument("--max-slice-nums", type=_positive_int, help="cap on slices per image (1 = single view)")
    parser.add_argument(
        "--image-index",
        type=_non_negative_int,
        default=0,
        help="index of the image within its prompt, for <image_id> (2.6)",
    )
    parser.add_argument("--no-image-id", dest="use_image_id", action="store_false", help="2.6: no <image_id> prefix")
    parser.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    parser.add_argument("--json", dest="as_json", action="store_true", help="one JSON object per image and line")
    parser.add_argument("--downsample-mode", choices=["16x", "4x"], help="4.6/4.7: image tokens merged 16x or 4x")
    wire(parser, inspect_image)
