"""Held-out exact-match accuracy of a model on the generated world's test split, per task.

    python scripts/eval_demo_model.py MODEL [--split runs/demo/world/test.json] [--limit N]
        [--tasks colour,shape,count] [--max-slice-nums K] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import minicpmv
from minicpmv.synth.evaluate import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--split", default="runs/demo/world/test.json")
    parser.add_argument("--limit", type=int, help="first N records only")
    parser.add_argument("--tasks", help="comma-separated tasks to score (default: all)")
    parser.add_argument("--json-out", help="also write the scores to this JSON file")
    parser.add_argument("--max-slice-nums", type=int, help="1: one 448-px view (the slicing ablation)")
    args = parser.parse_args()
    options = {"max_slice_nums": args.max_slice_nums} if args.max_slice_nums else {}
    tasks = set(args.tasks.split(",")) if args.tasks else None
    scores = evaluate(minicpmv.load(args.model), args.split, args.limit, tasks=tasks, **options)
    print("| task | correct | total | exact match |")
    print("| --- | --- | --- | --- |")
    for task, score in scores.items():
        print(f"| {task} | {score['correct']} | {score['total']} | {score['accuracy']:.1%} |")
    print(json.dumps(scores))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"model": args.model, "options": options, "scores": scores}, indent=1))


if __name__ == "__main__":
    main()
