"""`minicpmv merge-lora`: fold a LoRA adapter into its base checkpoint."""

from __future__ import annotations

import sys

from ..hub import resolve_model
from .options import wire


def merge_lora(model: str, adapter: str, output: str, force: bool = False) -> str:
    """Write OUTPUT: the base checkpoint with the adapter's low-rank updates added to the LLM
    projections and its fully trained parts (resampler, vision encoder) in place, in the
    official layout (loads with `minicpmv.load` like any checkpoint)."""
    from ..training.lora import merge_lora as merge

    folder = merge(resolve_model(model), adapter, output, force=force)
    print(f"minicpmv merge-lora: wrote {folder}", file=sys.stderr)
    print(folder)
    return str(folder)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "merge-lora",
        help="fold a LoRA adapter into its base checkpoint",
        description=merge_lora.__doc__.split("\n\n")[0],
    )
    parser.add_argument("--model", "-m", required=True, help="base checkpoint folder")
    parser.add_argument(
        "--adapter",
        required=True,
        help="folder with adapter_config.json and adapter_model.safetensors "
        "(a LoRA training checkpoint, or the run's folder: its newest)",
    )
    parser.add_argument("--output", "-o", required=True, help="folder to write (not the base's or the adapter's)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    wire(parser, merge_lora)
