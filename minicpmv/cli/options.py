"""The one CLI convention: every subcommand is a typed function whose parameters are its flags
(`wire` calls it with the parsed values by name), and the flag groups several subcommands share
(ModelFlags, SamplingFlags) are dataclasses their functions take as one parameter each."""

from __future__ import annotations

import argparse
import typing
from dataclasses import dataclass, fields, is_dataclass

from ..errors import ConfigError


@dataclass
class ModelFlags:
    """How to load a model: add_model_options' flags."""

    model: str | None = None  # None: the bundled demo model
    dtype: str | None = None
    device: str | None = None
    threads: int | None = None
    low_memory: bool = False
    vision_dtype: str = "auto"
    compile: str = "auto"
    llm_gguf: str | None = None
    mmproj: str | None = None
    downsample_mode: str | None = None  # 4.6/4.7: None = the checkpoint's own


@dataclass
class SamplingFlags:
    """How to decode: add_generation_options' flags."""

    preset: str = "greedy"
    max_tokens: int = 512
    min_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    system: str | None = None
    max_slice_nums: int | None = None
    thinking: bool = False


def wire(parser: argparse.ArgumentParser, function) -> None:
    """Make `function` the subcommand of `parser`: called with each parameter taken from the flag
    of the same name (a dataclass parameter, such as ModelFlags, gathers the flags named by its
    fields); an int it returns is the exit code, anything else means 0."""

    def run(args: argparse.Namespace) -> int:
        # read at call time, not when the parser is built: only the chosen subcommand pays
        values = {}
        for name, hint in typing.get_type_hints(function).items():
            if name == "return":
                continue
            group = next((t for t in (hint, *typing.get_args(hint)) if is_dataclass(t)), None)
            values[name] = (
                group(**{f.name: getattr(args, f.name) for f in fields(group)}) if group else getattr(args, name)
            )
        result = function(**values)
        return result if isinstance(result, int) and not isinstance(result, bool) else 0

    parser.set_defaults(run=run)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-m",
        "--model",
        help="checkpoint folder, Hugging Face id (openbmb/MiniCPM-V-2_6), llama.cpp GGUF file (with --mmproj) "
        "or demo (the default)",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: float32 on CPU")
    parser.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    parser.add_argument(
        "-t", "--threads", type=int, help="CPU threads for torch (default: the cores the load average leaves free)"
    )
    parser.add_argument(
        "--low-memory", action="store_true", help="sequential loading: vision parts and LLM never in memory together"
    )
    parser.add_argument(
        "--vision-dtype",
        choices=["auto", "float32", "bfloat16", "float16", "int8"],
        default="auto",
        help="vision encoder arithmetic (auto: bfloat16 on CPUs with native bf16, int8 on other CPUs "
        "with the native kernels, else the model's, unless `minicpmv tune` measured another faster; "
        "int8: its linears and attention as int8 products)",
    )
    parser.add_argument(
        "--compile",
        default="auto",
        metavar="auto|on|off|encode|decode",
        help="torch.compile the decode step and vision tower (auto: where `minicpmv tune "
        "--compile` measured it faster)",
    )
    parser.add_argument(
        "--llm-gguf",
        metavar="FILE",
        help="run the LLM in llama.cpp from this GGUF of the checkpoint (minicpmv export-gguf)",
    )
    parser.add_argument(
        "--mmproj",
        metavar="FILE",
        help="with -m MODEL.gguf: its llama.cpp vision projector GGUF (default: the *mmproj*.gguf beside it)",
    )
    parser.add_argument(
        "--downsample-mode",
        choices=["16x", "4x"],
        help="4.6/4.7: image tokens per crop, merged 16x (default) or 4x (4 times as many, finer detail)",
    )


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument(
        "--preset",
        choices=["greedy", "sampling", "precise"],
        default="greedy",
        help="greedy (default); sampling = official sampling=True; precise = official 3-beam preset",
    )
    group.add_argument("-n", "--max-tokens", type=int, default=512, help="most new tokens (default 512)")
    group.add_argument("--min-tokens", type=int, help="fewest new tokens before a terminator may end the answer")
    group.add_argument("--temperature", type=float, help="0 = greedy; > 0 samples")
    group.add_argument("--top-p", type=float)
    group.add_argument("--top-k", type=int)
    group.add_argument("--min-p", type=float)
    group.add_argument("--repetition-penalty", type=float)
    group.add_argument("--seed", type=int, help="seed for reproducible sampling")
    group.add_argument("--stop", action="append", help="stop string (repeatable)")
    group.add_argument("--system", help="system prompt")
    group.add_argument("--max-slice-nums", type=int, help="cap on slices per image (1 = single view)")
    group.add_argument(
        "--thinking", action="store_true", help="4.5: think before answering (the answer keeps its <think> block)"
    )


def load_model(args: ModelFlags):
    import torch

    from ..chat import load

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    if args.device is not None:
        try:
            kind = torch.device(args.device).type
        except RuntimeError:
            raise ConfigError(f"--device {args.device!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
        backend = getattr(torch, kind, None)  # torch.cuda, torch.mps, ...
        if kind != "cpu" and not (hasattr(backend, "is_available") and backend.is_available()):
            raise ConfigError(f"--device {args.device!r}: no {kind} device here (this torch sees none)")
    if args.threads:
        torch.set_num_threads(args.threads)
    else:
        from ..cpu import idle_threads

        torch.set_num_threads(min(torch.get_num_threads(), idle_threads()))
    if args.model is None:
        args.model = "demo"
    return load(
        args.model,
        dtype=args.dtype,
        device=args.device,
        low_memory=args.low_memory,
        vision_dtype=args.vision_dtype,
        compile=args.compile,
        llm_gguf=args.llm_gguf,
        mmproj=args.mmproj,
        downsample_mode=args.downsample_mode,
    )


def check_inputs(options: dict, images: list[str] = (), video: str | None = None) -> None:
    """Refuse bad images, a missing video and bad decoding options before the model loads (a
    user should not wait for a model to hear that a flag or a file is wrong)."""
    import os

    from ..chat_options import SAMPLING_OPTIONS, decoding_config
    from ..errors import ImageError
    from ..processing.image_io import open_image

    for path in images:
        open_image(path)  # its header: missing, unreadable, not an image or too large
    if video is not None and not os.path.isfile(video):
        raise ImageError(f"{video}: no such video file")
    # the ranges do not depend on the version; its presets' values do, and come with the model
    sampling = {k: v for k, v in options.items() if k in SAMPLING_OPTIONS}
    decoding_config(options.get("preset", "greedy"), "2.6", **sampling)


def generation_options(args: SamplingFlags) -> dict:
    """Keyword options for ChatModel.generate/stream from the parsed flags."""
    return {
        "preset": args.preset,
        "max_new_tokens": args.max_tokens,
        "min_new_tokens": args.min_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "seed": args.seed,
        "stop": args.stop,
        "system_prompt": args.system,
        "max_slice_nums": args.max_slice_nums,
        "thinking": args.thinking,
    }
