"""Exact-match accuracy per task on a split of the generated world (greedy answers).

Every turn of a record is scored: the model answers each user turn given the true conversation
before it. An answer matches when it equals the reference after trimming, lower-casing and
dropping a final period. Captions and transcriptions are scored the same strict way.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path


def normalize(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def evaluate(
    chat,
    split_json: str | Path,
    limit: int | None = None,
    max_new_tokens: int = 96,
    tasks: set[str] | None = None,
    answers: list | None = None,
    **options,
) -> dict[str, dict]:
    """{task: {"correct", "total", "accuracy"}} plus "all"; `options` go to `chat.generate`
    (e.g. max_slice_nums=1 for the single-view ablation). Each turn's {"id", "task", "question",
    "reference", "answer", "correct"} is appended to `answers` when given (to see what it got wrong)."""
    path = Path(split_json)
    records = [r for r in json.loads(path.read_text()) if tasks is None or r["task"] in tasks]
    scores: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for record in records[:limit]:
        turns = record["conversations"]
        for index in range(0, len(turns), 2):
            messages = [dict(turn) for turn in turns[: index + 1]]
            first = messages[0]
            if record.get("image"):
                text = first["content"].replace("<image>", "").strip()
                first["content"] = [path.parent / record["image"], text]
            answer = chat.generate(messages, max_new_tokens=max_new_tokens, **options).text
            reference = turns[index + 1]["content"]
            correct = normalize(answer) == normalize(reference)
            if answers is not None:
                answers.append(
                    {
                        "id": record.get("id"),
                        "task": record["task"],
                        "question": turns[index]["content"],
                        "reference": reference,
                        "answer": answer,
                        "correct": correct,
                    }
                )
            for key in (record["task"], "all"):
                scores[key][0] += correct
                scores[key][1] += 1
    return {task: {"correct": c, "total": n, "accuracy": c / n} for task, (c, n) in sorted(scores.items())}


def character_places(answers: list[dict]) -> dict[str, float]:
    """Per task (and "all"), the share of reference characters that the answer has at the same
    place, after normalizing; characters the answer lacks count as wrong, extra ones are ignored."""
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in answers:
        reference, answer = normalize(row["reference"]), normalize(row["answer"])
        right = sum(a == b for a, b in zip(reference, answer))
        for key in (row["task"], "all"):
            totals[key][0] += right
            totals[key][1] += len(reference)
    return {task: right / count for task, (right, count) in sorted(totals.items()) if count}


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% (Wilson score) interval of an accuracy of `correct` out of `total`: how far a
    score on a few dozen questions may be from the model's true rate. Unlike the normal
    approximation it stays inside [0, 1] and is not empty at 0 or `total` correct."""
    if total <= 0:
        raise ValueError(f"an interval needs at least one question, not {total}")
    rate = correct / total
    centre = (rate + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)
