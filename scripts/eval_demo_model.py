"""Held-out exact-match accuracy of a model on the generated world's test split, per task.

    python scripts/eval_demo_model.py MODEL [--split runs/demo/world/test.json] [--limit N]
        [--tasks colour,shape,count] [--max-slice-nums K] [--json-out FILE]

Each task's score comes with its 95% (Wilson) interval. With --json-out the file also lists
every answer next to its reference, and, per task, the share of answer characters right by place
(how near the wrong answers are: a number with one wrong digit scores high, an answer of the
wrong form low).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import minicpmv
from minicpmv.demo.evaluate import character_places, evaluate, wilson_interval


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
    answers: list[dict] = []
    scores = evaluate(minicpmv.load(args.model), args.split, args.limit, tasks=tasks, answers=answers, **options)
    print("| task | correct | total | exact match | 95% interval |")
    print("| --- | --- | --- | --- | --- |")
    for task, score in scores.items():
        low, high = wilson_interval(score["correct"], score["total"])
        print(f"| {task} | {score['correct']} | {score['total']} | {score['accuracy']:.1%} | {low:.0%}-{high:.0%} |")
    print(json.dumps(scores))
    places = character_places(answers)
    print("characters right by place: " + ", ".join(f"{task} {share:.1%}" for task, share in places.items()))
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "model": args.model,
                    "split": args.split,
                    "options": options,
                    "scores": scores,
                    "character_places": places,
                    "answers": answers,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
