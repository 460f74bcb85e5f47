"""Peak memory of answering one image question, normal vs low-memory (sequential) loading.

Uses the random 2.7 GB checkpoint `qwen2-1.5b-4layers` of `minicpmv bench` (SigLIP-400M vision
tower, a 4-layer Qwen2-1.5B-wide LLM, synthetic byte tokenizer), asks about the bundled
1344x896 image (7 crops) for 8 tokens in a fresh process per mode, and compares peak RSS
(VmHWM) with the larger part plus the KV cache.

    python benchmarks/low_memory.py [--cache-dir DIR] [--architecture qwen2-1.5b-4layers|2.6-int4|4.5-int4]

`2.6-int4`: the real 2.6 architecture (SigLIP-400M + Qwen2-7B) written directly as random int4
(group 64), about 9 GB on disk, where the fixed python + torch baseline is a few percent.
`4.5-int4`: the same for the real 4.5 architecture (SigLIP-400M + Qwen3-8B, 8.7 B parameters).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def measure(folder: str, low_memory: bool) -> None:
    """Runs in a fresh process: prints one JSON line."""
    from minicpmv import load
    from minicpmv.memory import peak_rss_mib
    from minicpmv.model.checkpoint import LLM_PARTS, VISION_PARTS
    from minicpmv.processing import MiniCPMVProcessor
    from minicpmv.quant.quality import example_image_path

    MiniCPMVProcessor.from_pretrained(folder)  # libraries and tokenizer in memory, no weights yet
    base = peak_rss_mib()
    chat = load(folder, low_memory=low_memory)
    started = time.perf_counter()
    result = chat.generate(
        [{"role": "user", "content": "What is in the image?"}], image=example_image_path(), max_new_tokens=8
    )
    llm = chat.model.config.llm
    kv_bytes = 2 * llm.num_layers * llm.num_kv_heads * llm.head_dim * 4 * (len(result.prompt_token_ids) + 8)
    opened = chat.residency.checkpoint
    sizes = {"vision": opened.nbytes(VISION_PARTS), "llm": opened.nbytes(LLM_PARTS)} if opened else {}
    print(
        json.dumps(
            {
                "peak_rss_mib": peak_rss_mib(),
                "baseline_rss_mib": base,
                "kv_cache_mib": kv_bytes / 2**20,
                "part_mib": {k: v / 2**20 for k, v in sizes.items()},
                "tokens": result.token_ids,
                "answer_seconds": time.perf_counter() - started,
                "timing": result.timing_line(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default="/tmp/minicpmv-bench", help="where the random checkpoint is written")
    parser.add_argument(
        "--architecture", choices=["qwen2-1.5b-4layers", "2.6-int4", "4.5-int4"], default="qwen2-1.5b-4layers"
    )
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=["normal", "low"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.folder, args.measure == "low")
    from minicpmv.bench import random_checkpoint, random_quantized_checkpoint

    root = Path(args.cache_dir) / "random-init"
    if args.architecture.endswith("-int4"):
        folder = random_quantized_checkpoint(args.architecture.removesuffix("-int4"), root, bits=4)
    else:
        folder = random_checkpoint(args.architecture, root)
    results = {}
    for mode in ("normal", "low"):
        out = subprocess.run(
            [sys.executable, __file__, "--measure", mode, "--folder", str(folder)],
            capture_output=True,
            text=True,
            check=True,
        )
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    low = results["low"]
    larger = max(low["part_mib"].values())
    print(
        f"parts: vision {low['part_mib']['vision']:.0f} MiB, llm {low['part_mib']['llm']:.0f} MiB; "
        f"KV cache {low['kv_cache_mib']:.1f} MiB"
    )
    for mode, result in results.items():
        print(f"{mode}: {result['timing']}; answer {result['answer_seconds']:.1f} s")
    print(f"normal: peak RSS {results['normal']['peak_rss_mib']:.0f} MiB")
    budget = larger + low["kv_cache_mib"]
    print(
        f"low-memory: peak RSS {low['peak_rss_mib']:.0f} MiB = {low['peak_rss_mib'] / budget:.3f}x (larger part + KV cache); "
        f"without the {low['baseline_rss_mib']:.0f} MiB of python, torch and the package before any weight: "
        f"{(low['peak_rss_mib'] - low['baseline_rss_mib']) / budget:.3f}x; "
        f"same tokens: {results['normal']['tokens'] == low['tokens']}"
    )


if __name__ == "__main__":
    main()
