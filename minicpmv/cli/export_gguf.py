"""`minicpmv export-gguf`: the LLM of a checkpoint as a GGUF file, for the llama.cpp backend."""

from __future__ import annotations

import time
from pathlib import Path

from ..hub import resolve_model
from .options import wire


def export_gguf(model: str, output: str, weight_type: str = "q4_0", force: bool = False) -> Path:
    """Write the LLM of a float 2.6 / 2.5 checkpoint as a GGUF (decoder linears in q4_0, q8_0, f16
    or f32) for `--llm-gguf`, where llama.cpp runs the decoder on this package's prompt embeddings.
    Needs the `llamacpp` extra (gguf, llama-cpp-python)."""
    from ..backends.gguf_export import export_gguf as write
    from ..errors import CheckpointError, ConfigError

    target = Path(output)
    if target.exists() and not force:
        raise CheckpointError(f"{target}: file exists (use --force to overwrite)")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError("export-gguf needs the gguf package: pip install 'minicpmv[llamacpp]'") from None
    start = time.perf_counter()
    write(resolve_model(model), target, weight_type)
    size = target.stat().st_size / 2**20
    print(f"wrote {target} ({weight_type}, {size:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    return target


def add_parser(subparsers) -> None:
    from ..backends.gguf_types import TYPES

    parser = subparsers.add_parser(
        "export-gguf",
        help="write the LLM as a GGUF for the llama.cpp backend",
        description=export_gguf.__doc__.split("\n\n")[0],
    )
    parser.add_argument("-m", "--model", required=True, help="float checkpoint folder (2.6 or 2.5)")
    parser.add_argument("-o", "--output", required=True, help="GGUF file to write")
    parser.add_argument(
        "--type", dest="weight_type", choices=list(TYPES), default="q4_0", help="decoder weight type (default q4_0)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    wire(parser, export_gguf)
