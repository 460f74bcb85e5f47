"""The first second: `minicpmv --help`, an argument error, and loading the bundled demo model,
each in a fresh process, timed from process start to exit (median of --repeat runs).

    python benchmarks/startup.py [--repeat 7] [--compare OTHER_SOURCE_TREE]

With --compare, the same measurements run alternately on this tree and another checkout of the
package (for example a `git worktree` of an older commit), so both see the same machine state;
the report gives medians and the ratio other / this.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
# runs `code` with the package imported from `tree` (the editable install's finder removed)
PRELUDE = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__]; "
    "sys.path.insert(0, {tree!r}); "
)
CASES = {
    "--help": "from minicpmv.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass",
    "argument error": "from minicpmv.cli import main\ntry: main(['generate', '--bogus'])\nexcept SystemExit: pass",
    "load demo model": "import minicpmv\nfrom minicpmv.bundled import demo_model_path\nminicpmv.load(demo_model_path())",
}


def once(tree: Path, code: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", PRELUDE.format(tree=str(tree)) + "\n" + code],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--compare", type=Path, help="another source tree of the package")
    args = parser.parse_args()
    trees = {"this": HERE} | ({"other": args.compare.resolve()} if args.compare else {})
    times = {(name, case): [] for name in trees for case in CASES}
    for _ in range(args.repeat):
        for case, code in CASES.items():
            for name, tree in trees.items():  # alternated: both see the same machine state
                times[name, case].append(once(tree, code))
    print(
        "| case | " + " | ".join(f"{name} median s" for name in trees) + (" | other / this |" if args.compare else " |")
    )
    print("| --- | " + " | ".join("---" for _ in trees) + (" | --- |" if args.compare else " |"))
    for case in CASES:
        medians = [statistics.median(times[name, case]) for name in trees]
        ratio = f" | {medians[1] / medians[0]:.1f}x |" if args.compare else " |"
        print(f"| {case} | " + " | ".join(f"{m:.2f}" for m in medians) + ratio)


if __name__ == "__main__":
    main()
