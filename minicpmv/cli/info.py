"""`minicpmv info`: what a checkpoint (or an official architecture) is, without loading weights."""

from __future__ import annotations

import json

from ..hub import resolve_model
from ..versions import SUPPORTED_VERSIONS
from .options import wire


def info(
    model: str | None = None, architecture: str | None = None, as_json: bool = False, system: bool = False
) -> dict:
    """Print the version, LLM family and parameter counts per part (vpm, resampler, llm).

    The model is built on the meta device, so even the real-size 8B architecture takes no memory.

    Args:
        model: a checkpoint folder (reads only its config.json).
        architecture: a version ("1.0", "2.0", "2.5", "2.6", "4.5", "4.6", "4.7"): the released model's shapes instead of a folder.
        as_json: one JSON object instead of text.
        system: also (or alone) this machine: CPU, the instruction set of the native kernels,
            native bf16, what `--vision-dtype auto` picks, huge pages, threads.
    """
    from ..errors import ConfigError

    if system and model is None and architecture is None:
        report, lines = {}, []
    elif (model is None) == (architecture is None):
        raise ConfigError("give either a checkpoint folder (-m) or --architecture (or --system)")
    else:
        report, lines = _model_report(model, architecture)
    if system:
        report["system"] = _system_report()
        lines += _system_lines(report["system"])
    print(json.dumps(report) if as_json else "\n".join(lines))
    return report


def _system_report() -> dict:
    """What this machine gives the CPU paths (the `--system` part of `info`)."""
    import torch

    from ..cpu import cpu_name, has_native_bf16
    from ..devices import untuned_vision_dtype
    from ..memory import huge_pages_possible
    from ..quant import native

    library = native.library()
    return {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "kernels": native.kernel_isa() if library is not None else f"none ({native.why_unavailable()})",
        "native_bf16": has_native_bf16(),
        "vision_dtype_auto": untuned_vision_dtype(torch.float32, torch.device("cpu")),
        "huge_pages": huge_pages_possible(),
    }


def _system_lines(system: dict) -> list[str]:
    return [
        f"system: {system['cpu']}, {system['threads']} threads",
        f"  native kernels: {system['kernels']}; native bf16: {'yes' if system['native_bf16'] else 'no'}"
        f" (--vision-dtype auto: {system['vision_dtype_auto']})",
        f"  huge pages for streamed weights: {'yes' if system['huge_pages'] else 'no'}",
    ]


def _model_report(model: str | None, architecture: str | None) -> tuple[dict, list[str]]:
    import torch

    from ..errors import ConfigError
    from ..model.config import OFFICIAL_ARCHITECTURES, MiniCPMVConfig
    from ..model.minicpmv import MiniCPMV

    if architecture is not None and architecture not in OFFICIAL_ARCHITECTURES:
        known = ", ".join(sorted(OFFICIAL_ARCHITECTURES))
        raise ConfigError(f"--architecture {architecture}: no released shapes recorded (known: {known})")
    config = (
        MiniCPMVConfig.from_pretrained(resolve_model(model))
        if model
        else MiniCPMVConfig.from_dict(OFFICIAL_ARCHITECTURES[architecture])
    )
    with torch.device("meta"):
        network = MiniCPMV(config)
    parts = {name: sum(p.numel() for p in getattr(network, name).parameters()) for name in ("vpm", "resampler", "llm")}
    report = {
        "version": config.version,
        "llm_family": config.llm.family,
        "vision": config.vision.kind,
        "parameters": sum(parts.values()),
        "parameters_per_part": parts,
        "tensors": len(network.state_dict()),
        "query_num": config.query_num,
    }
    lines = [
        f"MiniCPM-V {report['version']}: {config.vision.kind} SigLIP ({config.vision.num_layers} layers) + "
        f"{config.llm.family} LLM ({config.llm.num_layers} layers, hidden {config.llm.hidden_size})",
        f"  parameters: {report['parameters'] / 1e9:.3f} B in {report['tensors']} tensors",
        *(f"    {name:<9} {count / 1e6:10.1f} M" for name, count in parts.items()),
    ]
    return report, lines


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="version and parameter counts of a checkpoint or architecture",
        description=info.__doc__.split("\n\n")[0],
    )
    parser.add_argument("-m", "--model", help="checkpoint folder")
    parser.add_argument("--architecture", choices=SUPPORTED_VERSIONS, help="a released model's shapes")
    parser.add_argument("--json", dest="as_json", action="store_true")
    parser.add_argument("--system", action="store_true", help="also (or alone) this machine's CPU paths")
    wire(parser, info)
