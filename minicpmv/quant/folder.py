"""A checkpoint folder quantized into another: the official layout, the scheme in config.json,
written staged (a stopped run leaves no half folder) and never over its input."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..errors import CheckpointError
from ..files import cache_dir, check_output_folder, staged_folder
from ..jsonfile import read_json_object
from .apply import QuantConfig
from .bnb import is_bnb
from .stream import quantize_folder

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "config.json")


def quantize_checkpoint(source: str | Path, output: str | Path, config: QuantConfig, force: bool = False) -> dict:
    """Quantize `source` into `output` (replaced only with `force`), tensor by tensor
    (quant/stream.py); returns the report: output, quantization_config, seconds, input_bytes,
    output_bytes."""
    source = Path(source)
    target = check_output_folder(output, force, {"the input checkpoint": source})
    raw = read_json_object(source / "config.json")
    held = None if is_bnb(raw) else raw.get("quantization_config")  # bitsandbytes NF4: dequantized, then ours
    if held is not None:  # quantizing dequantized weights again would compound the rounding
        bits = held.get("bits") if isinstance(held, dict) else held
        raise CheckpointError(f"{source}: already quantized ({bits} bits); quantize the original checkpoint instead")
    start = time.perf_counter()
    with staged_folder(target) as stage:
        quantize_folder(source, stage, config)
        _copy_other_files(source, stage)
    return {
        "output": str(target),
        "quantization_config": config.to_dict(),
        "seconds": time.perf_counter() - start,
        "input_bytes": weight_bytes(source),
        "output_bytes": weight_bytes(target),
    }


def weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def loadable(source: Path) -> Path:
    """`source`, or for a bitsandbytes NF4 checkpoint (the official int4 ones) its conversion:
    dequantized once, exactly, into bfloat16 linears (`--bits 16`) in the cache, then reused.
    `minicpmv quantize -m SOURCE --bits 4` makes a smaller int4 copy instead."""
    import hashlib
    import sys

    source = Path(source)
    if not (source / "config.json").is_file() or not is_bnb(read_json_object(source / "config.json")):
        return source
    stamp = [str(source.resolve())] + [
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(source.glob("*.safetensors"))
    ]
    key = hashlib.sha1("\n".join(stamp).encode()).hexdigest()[:16]
    target = cache_dir() / "converted" / f"{source.name}-{key}"
    if not (target / "config.json").exists():
        print(f"minicpmv: converting the bitsandbytes int4 checkpoint {source} once, into {target}", file=sys.stderr)
        target.parent.mkdir(parents=True, exist_ok=True)
        with staged_folder(target) as stage:
            quantize_folder(source, stage, QuantConfig(bits=16))
            _copy_other_files(source, stage)
    return target


def _copy_other_files(source: Path, stage: Path) -> None:
    for path in source.iterdir():  # tokenizer, processor and other non-weight files
        if path.is_file() and path.name not in WEIGHT_FILES and not path.name.endswith((".safetensors", ".py")):
            shutil.copy2(path, stage / path.name)
