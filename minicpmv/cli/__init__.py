"""`minicpmv <subcommand>`: one console script; each subcommand is a typed, documented Python
function in its own module whose parameters are its flags (options.wire), registered here. Bad
input exits with code 2 and one line, never a traceback."""

from __future__ import annotations

import argparse
import sys

from ..errors import MiniCPMVError
from . import (
    align,
    bench,
    chat,
    export_gguf,
    generate,
    info,
    inspect_image,
    merge_lora,
    pull,
    quantize,
    serve,
    synth,
    train,
    tune,
)
from . import eval as eval_

# each module's add_parser registers its subcommand; its function is wired by options.wire
COMMANDS = [align, bench, chat, eval_, export_gguf, generate, info, inspect_image, merge_lora, pull, quantize, serve]
COMMANDS += [synth]
COMMANDS += [train, tune]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="minicpmv", description="Run, train, align and evaluate MiniCPM-V models.")
    parser.add_argument("--version", action="version", version=f"minicpmv {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(subparsers)
    return parser


def one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` and run the chosen subcommand; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except MiniCPMVError as exc:
        print(f"minicpmv {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the command was given, or the disk (full, read-only)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"minicpmv {args.command}: error: {one_line(exc.strerror or str(exc))}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minicpmv {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `minicpmv inspect-image ... | head`
        sys.stderr.close()
        return 0
