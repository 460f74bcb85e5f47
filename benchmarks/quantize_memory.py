"""Peak memory of `minicpmv quantize` on a real-size bfloat16 checkpoint (random weights).

    python benchmarks/quantize_memory.py [--cache-dir DIR] [--architecture 2.6] [--bits 4]

Writes (once) a seeded random bfloat16 checkpoint of the architecture shard by shard
(`minicpmv.bench.random_bf16_checkpoint`, 16 GB for 2.6), then quantizes it in a fresh process
and reports that process's peak RSS (VmHWM) against the largest tensor of the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, sys
from minicpmv.memory import peak_rss_mib
from minicpmv.quant.folder import quantize_checkpoint
from minicpmv.quant import QuantConfig
base = peak_rss_mib()
report = quantize_checkpoint(sys.argv[1], sys.argv[2], QuantConfig(bits=int(sys.argv[3])), force=True)
print(json.dumps({"peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": base, **report}))
"""


def largest_tensor_mib(folder: Path) -> tuple[str, float]:
    from minicpmv.model.checkpoint import weight_files
    from minicpmv.model.safetensors_reader import read_header

    best = ("", 0)
    for path in set(weight_files(folder).values()):
        header, _ = read_header(path)
        for name, entry in header.items():
            if name != "__metadata__":
                size = entry["data_offsets"][1] - entry["data_offsets"][0]
                best = max(best, (name, size), key=lambda x: x[1])
    return best[0], best[1] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default="/tmp/minicpmv-bench")
    parser.add_argument("--architecture", default="2.6")
    parser.add_argument("--bits", type=int, default=4)
    args = parser.parse_args()
    from minicpmv.bench import random_bf16_checkpoint

    source = random_bf16_checkpoint(args.architecture, Path(args.cache_dir) / "random-init")
    output = Path(args.cache_dir) / "quantized-out"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(output), str(args.bits)], capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    name, largest = largest_tensor_mib(source)
    print(
        f"{args.architecture} bf16 -> int{args.bits}: {result['input_bytes'] / 2**30:.2f} GiB -> "
        f"{result['output_bytes'] / 2**30:.2f} GiB in {time.perf_counter() - start:.0f} s; peak RSS "
        f"{result['peak_rss_mib']:.0f} MiB (baseline {result['baseline_rss_mib']:.0f} MiB); largest tensor "
        f"{name} {largest:.0f} MiB; peak - largest = {result['peak_rss_mib'] - largest:.0f} MiB"
    )
    shutil.rmtree(output, ignore_errors=True)


if __name__ == "__main__":
    main()
