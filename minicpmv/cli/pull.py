"""`minicpmv pull`: download a model by its Hugging Face id into the hub cache."""

from __future__ import annotations

import sys

from .options import wire


def pull(model: str, revision: str | None = None) -> str:
    """Download MODEL (e.g. openbmb/MiniCPM-V-2_6) into the Hugging Face cache and print its
    folder; afterwards `-m MODEL` works offline. Only configs, tokenizer files and safetensors
    weights are fetched, never remote code."""
    from ..hub import OFFICIAL_IDS
    from ..hub import pull as download

    if model not in OFFICIAL_IDS:
        print(f"minicpmv pull: note: {model} is not an official MiniCPM-V id; trying it anyway", file=sys.stderr)
    folder = download(model, revision)
    print(folder)
    return str(folder)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pull", help="download a model by Hugging Face id", description=pull.__doc__.split("\n\n")[0]
    )
    parser.add_argument("model", help="a Hugging Face id, e.g. openbmb/MiniCPM-V-2_6")
    parser.add_argument("--revision", help="a branch, tag or commit (default main)")
    wire(parser, pull)
