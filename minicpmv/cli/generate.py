"""`minicpmv generate`: one answer about images or a video, streamed or as JSON."""

from __future__ import annotations

import json
import sys

from .options import (
    ModelFlags,
    SamplingFlags,
    add_generation_options,
    add_model_options,
    check_inputs,
    generation_options,
    load_model,
    wire,
)


def generate(
    prompt: str,
    image: list[str],
    video: str | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    no_image_id: bool = False,
    as_json: bool = False,
    model: ModelFlags | None = None,
    sampling: SamplingFlags | None = None,
) -> dict:
    """Answer a prompt about images (or a video's frames) and print the answer as it is generated.

    The user turn is built like the official chat(): images first, then the prompt, joined by
    newlines. With --json, prints one object with `text`, `token_ids` (new tokens only),
    `prompt_token_ids` (the full input after image expansion) and timings. Every run ends with
    a timing line on stderr: load, image encode, image tokens, prefill and decode tok/s, peak RSS.
    """
    sampling = sampling or SamplingFlags()
    options = generation_options(sampling)
    check_inputs(options, image, video)
    chat_model = load_model(model or ModelFlags())
    messages = [{"role": "user", "content": [{"image": path} for path in image] + [prompt]}]
    if video:
        options.update(video=video, fps=fps, max_frames=max_frames)
    if no_image_id:
        options["use_image_id"] = False
    if as_json or sampling.preset == "precise":
        result = chat_model.generate(messages, **options)
        if not as_json:
            print(result.text, flush=True)
    else:
        stream = chat_model.stream(messages, **options)
        for delta in stream:
            print(delta, end="", flush=True)
        print(flush=True)
        result = stream.result
    record = {
        "text": result.text,
        "token_ids": result.token_ids,
        "prompt_token_ids": result.prompt_token_ids,
        "image_tokens": result.image_tokens,
        "stopped_by": result.stopped_by,
    }
    if as_json:
        print(json.dumps(record, ensure_ascii=False), flush=True)
    print(result.timing_line(), file=sys.stderr, flush=True)
    return record


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate", help="answer a prompt about images or a video", description=generate.__doc__.split("\n\n")[0]
    )
    add_model_options(parser)
    parser.add_argument("-p", "--prompt", required=True)
    parser.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    parser.add_argument("--video", help="video file: its frames become the images (needs the video extra)")
    parser.add_argument(
        "--fps", type=float, help="video frames sampled per second (default: the version's recipe, 2.6: 1, 4.5: 3)"
    )
    parser.add_argument(
        "--max-frames", type=int, help="most video frames (2.6: 64) or frame groups after packing (4.5: 180)"
    )
    parser.add_argument("--no-image-id", action="store_true", help="2.6: no <image_id> before each image")
    parser.add_argument(
        "--json", dest="as_json", action="store_true", help="print text, token_ids and prompt_token_ids as JSON"
    )
    add_generation_options(parser)
    wire(parser, generate)
