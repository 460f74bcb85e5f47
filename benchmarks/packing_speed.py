"""Training throughput with and without packing on the same data (issue: training toolkit).

    python benchmarks/packing_speed.py [--samples 48] [--batch-size 8] [--steps 6] [--max-length 1024]

Generates a fine-tuning set of short samples of mixed lengths (single image, multi-image and
text-only records), then trains the tiny 2.6 checkpoint's SFT recipe on it twice, padded and
packed, and prints real (non-padding) tokens per second, median over the steps after the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from training_data import make_dataset  # noqa: E402

from minicpmv.training.recipes import recipe  # noqa: E402
from minicpmv.training.run import run_training  # noqa: E402

CHECKPOINT = ROOT / "tests" / "fixtures" / "reference" / "minicpmv26_tiny" / "checkpoint"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--model", default=str(CHECKPOINT))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minicpmv-packing-"))
    data = make_dataset(work / "data", count=args.samples)
    print(f"{args.samples} samples, batch {args.batch_size}, {args.steps} steps, rows of {args.max_length} tokens")
    print("| batching | real tokens/s (median) | loss after the last step |")
    print("| --- | --- | --- |")
    for packing in (False, True):
        chosen = recipe(
            "sft",
            {
                "max_steps": args.steps,
                "batch_size": args.batch_size,
                "packing": packing,
                "max_length": args.max_length,
                "precision": "float32",
                "learning_rate": 1e-4,
            },
        )
        result = run_training(chosen, args.model, data, work / f"packing-{packing}", progress=False)
        speeds = [r["tokens_per_s"] for r in result["history"][1:]]
        rows = json.loads((work / f"packing-{packing}" / "metrics.jsonl").read_text().splitlines()[-1])
        print(
            f"| {'packed' if packing else 'padded'} | {statistics.median(speeds):.0f} | {rows['loss']:.4f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
