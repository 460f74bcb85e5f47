"""A fresh prompt's attention: SDPA with the explicit causal mask against SDPA's is_causal (what
the LLM passes now, model/blocks.CAUSAL), Qwen2-1.5B's heads (12 query, 2 key/value, 128 wide),
float32, alternating, medians of 7 per round.

    python benchmarks/causal_sdpa.py [--threads 2] [--lengths 128,744] [--rounds 3] [--isa avx2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from isa import EMULATED, HELP, emulate

from minicpmv.model.llm import attention_bias


def median_ms(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


@torch.inference_mode()
def compare(length: int, rounds: int) -> tuple[float, float]:
    """Medians (ms) of the explicit mask's and is_causal's SDPA at `length` tokens."""
    q, k, v = torch.randn(1, 12, length, 128), torch.randn(1, 2, length, 128), torch.randn(1, 2, length, 128)
    mask = attention_bias(None, 1, length, 0, torch.float32, "cpu")
    calls = {
        "explicit": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
        "causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
    }
    times = {name: [] for name in calls}
    for r in range(rounds):
        for name in ("explicit", "causal") if r % 2 == 0 else ("causal", "explicit"):
            times[name].append(median_ms(calls[name]))
    return statistics.median(times["explicit"]), statistics.median(times["causal"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", default="128,744")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--isa", choices=sorted(EMULATED), help=HELP)
    args = parser.parse_args()
    emulate(args.isa)
    torch.set_num_threads(args.threads)
    print(f"| tokens | explicit mask ms | is_causal ms | ratio |  ({args.threads} threads, torch {torch.__version__})")
    for length in map(int, args.lengths.split(",")):
        explicit, causal = compare(length, args.rounds)
        print(f"| {length} | {explicit:.2f} | {causal:.2f} | {explicit / causal:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
