"""`minicpmv export-gguf`: the LLM of a checkpoint as a GGUF file, for the llama.cpp backend."""

from __future__ import annotations

import time
from pathlib import Path

from ..hub import resolve_model
from .options import wire


def export_gguf(
    model: str, output: str, weight_type: str = "q4_0", mmproj: str | None = None, force: bool = False
) -> Path:
    """Write the LLM of a float 4.5 / 2.6 / 2.5 checkpoint as a GGUF (decoder linears in q4_0, q8_0,
    f16 or f32) with its tokenizer, and with --mmproj its vision projector GGUF in llama.cpp's
    MiniCPM-V layout: the pair runs in llama.cpp, llama-cpp-python and ollama on their own, and
    loads back here (-m MODEL.gguf --mmproj FILE). The LLM file alone serves `--llm-gguf`.
    Needs the `llamacpp` extra (gguf, llama-cpp-python)."""
    from ..backends.gguf_export import export_gguf as write
    from ..backends.mmproj import export_mmproj
    from ..errors import CheckpointError, ConfigError

    targets = [Path(output)] + ([Path(mmproj)] if mmproj else [])
    for target in targets:
        if target.exists() and not force:
            raise CheckpointError(f"{target}: file exists (use --force to overwrite)")
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ConfigError("export-gguf needs the gguf package: pip install 'minicpmv[llamacpp]'") from None
    start, folder = time.perf_counter(), resolve_model(model)
    write(folder, targets[0], weight_type)
    if mmproj:  # f16 matrices as llama.cpp's converter writes them; f32 with an f32 LLM
        export_mmproj(folder, targets[1], "f32" if weight_type == "f32" else "f16")
    sizes = ", ".join(f"{t} ({t.stat().st_size / 2**20:.1f} MiB)" for t in targets)
    print(f"wrote {sizes} [{weight_type}] in {time.perf_counter() - start:.1f} s")
    return targets[0]


def add_parser(subparsers) -> None:
    from ..backends.gguf_types import TYPES

    parser = subparsers.add_parser(
        "export-gguf",
        help="write the LLM (and with --mmproj the vision projector) as GGUF files for llama.cpp",
        description=export_gguf.__doc__.split("\n\n")[0],
    )
    parser.add_argument("-m", "--model", required=True, help="float checkpoint folder (4.5, 2.6 or 2.5)")
    parser.add_argument("-o", "--output", required=True, help="LLM GGUF file to write")
    parser.add_argument("--mmproj", metavar="FILE", help="also write the vision projector GGUF (llama.cpp's mmproj)")
    parser.add_argument(
        "--type", dest="weight_type", choices=list(TYPES), default="q4_0", help="decoder weight type (default q4_0)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    wire(parser, export_gguf)
