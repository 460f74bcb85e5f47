"""Rows per second of `minicpmv eval run` on a demo set with the bundled model, by batch size.

Contenders (one per batch size) run in turn, alternating, `--repeats` times each on the same
rows; each run answers `--rows` rows of the set from scratch (model loaded once, outside the
timing). Prints the median rows/s per batch size and its ratio to batch 1.

    python benchmarks/eval_speed.py [--set demo_mcq] [--rows 48] [--batches 1,2,4,8] [--repeats 3] [--preset precise]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", default="demo_mcq", help="demo_yorn, demo_mcq, demo_vqa or demo_caption")
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="precise", choices=["precise", "greedy"])
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()

    import torch

    import minicpmv
    from minicpmv.bundled import demo_model_path
    from minicpmv.demo.benchmark_sets import write_demo_benchmarks
    from minicpmv.evaluation.answerers import LocalAnswerer
    from minicpmv.evaluation.benchmarks import get_benchmark
    from minicpmv.evaluation.runner import run_benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="eval-speed-"))
    data = write_demo_benchmarks(work / "data")[args.set]
    answerer = LocalAnswerer(minicpmv.load(demo_model_path()), args.preset)
    batches = [int(b) for b in args.batches.split(",")]
    speeds: dict[int, list[float]] = {b: [] for b in batches}
    answers: dict[int, str] = {}
    for repeat in range(args.repeats):
        for batch in batches:  # alternate the contenders within each repeat
            out = work / f"b{batch}-r{repeat}"
            start = time.perf_counter()
            run_benchmark(
                answerer, get_benchmark(args.set), data, out, limit=args.rows, batch_size=batch, show_progress=False
            )
            speeds[batch].append(args.rows / (time.perf_counter() - start))
            answers[batch] = (out / f"{args.set}.tsv").read_text()
    base = statistics.median(speeds[batches[0]])
    print(
        f"CPU: {cpu_name()}, torch threads {torch.get_num_threads()}, set {args.set}, {args.rows} rows, "
        f"preset {args.preset}, {args.repeats} repeats"
    )
    for batch in batches:
        median = statistics.median(speeds[batch])
        same = (
            "same predictions as batch 1"
            if answers[batch] == answers[batches[0]]
            else "predictions differ from batch 1"
        )
        print(
            f"  batch {batch:>2}: {median:6.2f} rows/s (x{median / base:.2f})  runs {[f'{s:.2f}' for s in speeds[batch]]}  {same}"
        )


if __name__ == "__main__":
    main()
