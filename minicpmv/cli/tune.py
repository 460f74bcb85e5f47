"""`minicpmv tune`: find the fastest settings of this machine for a model, and remember them."""

from __future__ import annotations

import argparse

from ..hub import resolve_model
from .options import wire


def tune(
    model: str,
    threads: list[int] | None = None,
    crops_per_call: list[int] | None = None,
    repeat: int = 3,
    image: str | None = None,
    try_compile: bool = False,
    try_int8: bool = False,
) -> dict:
    """Measure thread counts separately for image encoding, prefill and decoding (and how many
    crops go through the vision tower at once), print the table, and store the best settings in
    the per-machine cache (MINICPMV_CACHE_DIR, else ~/.cache/minicpmv/tune.json), which every
    later `load()` of a model with the same shapes applies automatically.

    With try_compile (`--compile`), the decode step and the vision tower are also measured
    compiled; later loads compile the parts that came out faster (`load(compile="auto")`). With
    try_int8 (`--int8-vision`; always on CPUs without native bf16, where `--vision-dtype auto`
    takes int8 untuned), the vision tower is also measured in int8, and later loads with
    `--vision-dtype auto` run it in the precision that came out fastest (int8 is lossy, as bf16
    is: under 1% feature difference, docs/benchmarks.md).
    """
    from ..tuning import tune_model

    tuned = tune_model(resolve_model(model), threads, crops_per_call, repeat, image, try_compile, try_int8)
    best, rows = tuned["best"], tuned["rows"]
    print("| phase | threads | crops per call | compiled | vision | result |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        result = f"{row['ms']:.1f} ms" if "ms" in row else f"{row['tok_per_s']:.1f} tok/s"
        compiled = "yes" if row["compiled"] else "no"
        vision = row.get("vision_dtype", "auto") if row["phase"] == "encode" else ""
        print(
            f"| {row['phase']} | {row['threads']} | {row.get('crops_per_call', '')} | {compiled} | {vision} | {result} |"
        )
    if try_compile:
        print(f"compile time: {tuned['compile_seconds']:.1f} s")
    print(f"best: {best}\nsaved to {tuned['path']}")
    return best


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("values must be at least 1")
    return values


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune", help="measure and remember the fastest settings for a model", description=tune.__doc__.split("\n\n")[0]
    )
    parser.add_argument("-m", "--model", required=True, help="checkpoint folder")
    parser.add_argument("--threads", type=_int_list, help="thread counts to try (default 1..cpu count)")
    parser.add_argument("--crops-per-call", type=_int_list, help="vision batch sizes to try (default 1,4,16)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--image", help="image to encode (default: the bundled example)")
    parser.add_argument(
        "--compile",
        dest="try_compile",
        action="store_true",
        help="also measure the decode step and vision tower under torch.compile",
    )
    parser.add_argument(
        "--int8-vision",
        dest="try_int8",
        action="store_true",
        help="also measure the vision tower in int8 (always without native bf16); --vision-dtype auto then takes the fastest",
    )
    wire(parser, tune)
