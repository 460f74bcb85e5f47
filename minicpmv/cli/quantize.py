"""`minicpmv quantize`: write an int8 / int4 weight-only copy of a checkpoint, optionally with a
quality report against the original."""

from __future__ import annotations

import json
from pathlib import Path

from ..hub import resolve_model
from .options import wire


def quantize(
    model: str,
    output: str,
    bits: int = 4,
    group_size: int = 64,
    vision: str | None = None,
    lm_head_bits: int | None = None,
    check: bool = False,
    check_tokens: int = 32,
    force: bool = False,
) -> dict:
    """Quantize the LLM linears of `model` (int8 per channel, int4 in groups, or bits=16: bfloat16
    weights computed in float32) and save the result in the official folder layout at `output`;
    the scheme is recorded in config.json (`quantization_config`), not in file names. lm_head is
    int8 (bfloat16 with bits=16) unless `lm_head_bits` says 4, 8 or 16; `vision="int8"` also
    quantizes the vision tower and the resampler's input projection.

    With `check`, compares the saved model with the original on fixed prompts and the bundled
    image: top-1 agreement, mean KL of next-token distributions, greedy text equality.
    """
    from ..chat import load
    from ..quant import QuantConfig
    from ..quant.folder import quantize_checkpoint
    from ..quant.quality import compare

    source = resolve_model(model)
    config = QuantConfig(
        bits=bits, group_size=group_size, vision_bits=8 if vision == "int8" else None, lm_head_bits=lm_head_bits
    )
    report = quantize_checkpoint(source, output, config, force)
    target = Path(report["output"])
    print(
        f"wrote {target}: {report['input_bytes'] / 2**20:.1f} MiB -> {report['output_bytes'] / 2**20:.1f} MiB "
        f"of weights in {report['seconds']:.1f} s",
        flush=True,
    )
    if check:
        # float32 vision in both, on every CPU: the report is about the stored weights
        report["check"] = compare(
            load(source, dtype="float32", vision_dtype="float32"),
            load(target, dtype="float32", vision_dtype="float32"),
            new_tokens=check_tokens,
        )
        for row in report["check"]["samples"]:
            print(
                f"  {row['question'][:40]:<40} top-1 {row['top1_agreement']:.3f}  KL {row['mean_kl']:.4f}  "
                f"same text {'yes' if row['greedy_text_equal'] else 'no'}",
                flush=True,
            )
        print(json.dumps({k: v for k, v in report["check"].items() if k != "samples"}), flush=True)
    return report


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "quantize", help="write an int8/int4 copy of a checkpoint", description=quantize.__doc__.split("\n\n")[0]
    )
    parser.add_argument("-m", "--model", required=True, help="input checkpoint folder")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument(
        "--bits",
        type=int,
        choices=[4, 8, 16],
        default=4,
        help="16: bfloat16 weights with float32 arithmetic (lossless for bfloat16 checkpoints)",
    )
    parser.add_argument("--group-size", type=int, choices=[32, 64, 128], default=64, help="int4 group size")
    parser.add_argument("--vision", choices=["int8"], help="also quantize the vision tower and resampler input")
    parser.add_argument(
        "--lm-head-bits",
        type=int,
        choices=[4, 8, 16],
        help="lm_head precision (default: 8, or 16 with --bits 16); 4 reads the fewest bytes per token",
    )
    parser.add_argument("--check", action="store_true", help="report quality against the original")
    parser.add_argument("--check-tokens", type=int, default=32, help="answer length for --check")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    wire(parser, quantize)
