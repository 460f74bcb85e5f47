"""A checkpoint folder quantized into another: the official layout, the scheme in config.json,
written staged (a stopped run leaves no half folder) and never over its input."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..errors import CheckpointError
from ..files import check_output_folder, staged_folder
from ..jsonfile import read_json_object
from .apply import QuantConfig
from .stream import quantize_folder

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "config.json")


def quantize_checkpoint(source: str | Path, output: str | Path, config: QuantConfig, force: bool = False) -> dict:
    """Quantize `source` into `output` (replaced only with `force`), tensor by tensor
    (quant/stream.py); returns the report: output, quantization_config, seconds, input_bytes,
    output_bytes."""
    source = Path(source)
    target = check_output_folder(output, force, {"the input checkpoint": source})
    held = read_json_object(source / "config.json").get("quantization_config")
    if held is not None:  # quantizing dequantized weights again would compound the rounding
        bits = held.get("bits") if isinstance(held, dict) else held
        raise CheckpointError(f"{source}: already quantized ({bits} bits); quantize the original checkpoint instead")
    start = time.perf_counter()
    with staged_folder(target) as stage:
        quantize_folder(source, stage, config)
        for path in source.iterdir():  # tokenizer, processor and other non-weight files
            if path.is_file() and path.name not in WEIGHT_FILES and not path.name.endswith((".safetensors", ".py")):
                shutil.copy2(path, stage / path.name)
    return {
        "output": str(target),
        "quantization_config": config.to_dict(),
        "seconds": time.perf_counter() - start,
        "input_bytes": weight_bytes(source),
        "output_bytes": weight_bytes(target),
    }


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
