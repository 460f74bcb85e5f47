"""Decode speed of the demo model when another process keeps cores busy: thread counts and
OpenMP's wait policy, each in a fresh process, alternated, medians.

    python benchmarks/busy_threads.py [--hogs 1] [--repeat 5] [--tokens 64]

`--hogs N` starts N busy-looping processes for the whole run (0: an idle machine). Each case
runs `minicpmv generate` on the bundled model (greedy, --min-tokens so every run decodes the
same count) and reads decode tok/s from its timing line.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import statistics
import subprocess
import sys


def hog() -> None:
    while True:
        pass


def decode_speed(threads: int | None, policy: str | None, tokens: int) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, "-m", "minicpmv", "generate", "-p", "Describe the scene.", "--image",
               "minicpmv/assets/demo-scene.png", "-n", str(tokens), "--min-tokens", str(tokens)]  # fmt: skip
    if threads:
        command += ["-t", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return float(re.search(r"decode \d+ tok at ([\d.]+) tok/s", done.stderr).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hogs", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    cores = os.cpu_count()
    cases = {
        "default (no -t)": (None, None),
        "-t 1": (1, None),
        f"{cores} threads, OMP_WAIT_POLICY=PASSIVE": (None, "PASSIVE"),
        "-t 1, OMP_WAIT_POLICY=PASSIVE": (1, "PASSIVE"),
    }
    hogs = [multiprocessing.Process(target=hog, daemon=True) for _ in range(args.hogs)]
    for process in hogs:
        process.start()
    try:
        speeds = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, (threads, policy) in cases.items():
                speeds[name].append(decode_speed(threads, policy, args.tokens))
    finally:
        for process in hogs:
            process.terminate()
    print(f"{cores} cores, {args.hogs} busy process(es); decode tok/s, median of {args.repeat}")
    print("| case | median | min | max |")
    print("| --- | --- | --- | --- |")
    for name, values in speeds.items():
        print(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |")


if __name__ == "__main__":
    main()
