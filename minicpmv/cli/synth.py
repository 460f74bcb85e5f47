"""`minicpmv synth`: generate the visual world (scenes and documents) as fine-tuning data."""

from __future__ import annotations

import json

from .options import wire


def synth(
    output: str,
    seed: int = 0,
    train: int = 2000,
    validation: int = 100,
    test: int = 200,
    document_share: float | None = None,
    benchmarks: bool = False,
) -> dict:
    """Write train / validation / test JSON files (official fine-tuning format, each record
    tagged with its task) and their images under OUTPUT, deterministically from --seed; prints
    the number of records per split and task. With --benchmarks, writes the test split's images
    as the demo benchmark TSVs instead (demo_yorn, demo_mcq, demo_vqa, demo_caption)."""
    from collections import Counter

    from ..demo.build import build_world
    from ..errors import ConfigError

    sizes = {"train": train, "validation": validation, "test": test}
    share = document_share if document_share is not None else 0.4 if benchmarks else 0.5
    if any(n < 0 for n in sizes.values()) or not 0 <= share <= 1:
        raise ConfigError("image counts must be >= 0 and --document-share within [0, 1]")
    if benchmarks:
        from ..demo.benchmark_sets import write_demo_benchmarks

        paths = write_demo_benchmarks(output, seed, test, share)
        summary = {name: {"file": str(path)} for name, path in paths.items()}
        print(json.dumps(summary, indent=1))
        return summary
    paths = build_world(output, seed, {k: v for k, v in sizes.items() if v}, share)
    summary = {}
    for split, path in paths.items():
        records = json.loads(path.read_text())
        summary[split] = {
            "file": str(path),
            "records": len(records),
            "tasks": dict(Counter(r["task"] for r in records)),
        }
    print(json.dumps(summary, indent=1))
    return summary


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "synth", help="generate the visual world as fine-tuning data", description=synth.__doc__.split("\n\n")[0]
    )
    parser.add_argument("--output", "-o", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    parser.add_argument("--validation", type=int, default=100)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument(
        "--document-share",
        type=float,
        default=None,
        help="share of images that are documents (default 0.5; 0.4 with --benchmarks)",
    )
    parser.add_argument(
        "--benchmarks",
        action="store_true",
        help="write the test split as VLMEvalKit-format demo benchmark TSVs (minicpmv eval run -b demo)",
    )
    wire(parser, synth)
