"""`minicpmv info`: what a checkpoint (or an official architecture) is, without loading weights."""

from __future__ import annotations

import json

from ..hub import resolve_model
from ..versions import SUPPORTED_VERSIONS
from .options import wire


def info(model: str | None = None, architecture: str | None = None, as_json: bool = False) -> dict:
    """Print the version, LLM family and parameter counts per part (vpm, resampler, llm).

    The model is built on the meta device, so even the real-size 8B architecture takes no memory.

    Args:
        model: a checkpoint folder (reads only its config.json).
        architecture: a version ("1.0", "2.0", "2.5", "2.6", "4.5", "4.6", "4.7"): the released model's shapes instead of a folder.
        as_json: one JSON object instead of text.
    """
    import torch

    from ..errors import ConfigError
    from ..model.config import OFFICIAL_ARCHITECTURES, MiniCPMVConfig
    from ..model.minicpmv import MiniCPMV

    if (model is None) == (architecture is None):
        raise ConfigError("give either a checkpoint folder (-m) or --architecture")
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
    if as_json:
        print(json.dumps(report))
    else:
        print(
            f"MiniCPM-V {report['version']}: {config.vision.kind} SigLIP ({config.vision.num_layers} layers) + "
            f"{config.llm.family} LLM ({config.llm.num_layers} layers, hidden {config.llm.hidden_size})"
        )
        print(f"  parameters: {report['parameters'] / 1e9:.3f} B in {report['tensors']} tensors")
        for name, count in parts.items():
            print(f"    {name:<9} {count / 1e6:10.1f} M")
    return report


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="version and parameter counts of a checkpoint or architecture",
        description=info.__doc__.split("\n\n")[0],
    )
    parser.add_argument("-m", "--model", help="checkpoint folder")
    parser.add_argument("--architecture", choices=SUPPORTED_VERSIONS, help="a released model's shapes")
    parser.add_argument("--json", dest="as_json", action="store_true")
    wire(parser, info)
