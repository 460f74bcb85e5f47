"""Peak memory of loading a checkpoint: is it near the size of the weights?

Uses the seeded random checkpoint `minicpmv bench` writes for the architecture
`qwen2-1.5b-4layers` (official 2.6 layout: the real SigLIP-400M vision tower and a
Qwen2-1.5B-wide LLM cut to 4 layers, about 2.7 GB in float32, written once). In a fresh process,
loads it with `minicpmv.model.checkpoint.load_model`, touches every weight (so that every page
is really resident), and reports peak RSS against the weights' size.

    python benchmarks/load_memory.py [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def measure(folder: str) -> None:
    """Runs in a fresh process: prints one JSON line."""
    import torch

    from minicpmv.memory import peak_rss_mib

    baseline_mib = peak_rss_mib()  # python + torch
    from minicpmv.model.checkpoint import load_model

    start = time.perf_counter()
    model = load_model(folder)
    load_seconds = time.perf_counter() - start
    with torch.no_grad():
        checksum = sum(float(p.float().sum()) for p in model.parameters())  # page every weight in
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peak_mib = peak_rss_mib()
    print(
        json.dumps(
            {
                "weights_mib": weights_bytes / 2**20,
                "peak_rss_mib": peak_mib,
                "baseline_rss_mib": baseline_mib,
                "load_seconds": load_seconds,
                "checksum_finite": checksum == checksum,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default="/tmp/minicpmv-bench", help="where the random checkpoint is written")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure)
    from minicpmv.bench import random_checkpoint

    folder = random_checkpoint("qwen2-1.5b-4layers", Path(args.cache_dir) / "random-init")
    out = subprocess.run(
        [sys.executable, __file__, "--measure", str(folder)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    ratio = result["peak_rss_mib"] / result["weights_mib"]
    print(
        f"weights {result['weights_mib']:.0f} MiB | peak RSS {result['peak_rss_mib']:.0f} MiB "
        f"(python+torch alone {result['baseline_rss_mib']:.0f} MiB) | ratio {ratio:.3f} | "
        f"load {result['load_seconds']:.2f}s"
    )


if __name__ == "__main__":
    main()
