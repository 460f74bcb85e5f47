"""Exact-match accuracy per task on a split of the generated world (greedy answers).

Every turn of a record is scored: the model answers each user turn given the true conversation
before it. An answer matches when it equals the reference after trimming, lower-casing and
dropping a final period. Captions and transcriptions are scored the same strict way.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path


def normalize(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def evaluate(chat, split_json: str | Path, limit: int | None = None, max_new_tokens: int = 96,
             tasks: set[str] | None = None, **options) -> dict[str, dict]:
    """{task: {"correct", "total", "accuracy"}} plus "all"; `options` go to `chat.generate`
    (e.g. max_slice_nums=1 for the single-view ablation)."""
    path = Path(split_json)
    records = [r for r in json.loads(path.read_text()) if tasks is None or r["task"] in tasks]
    scores: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for record in records[:limit]:
        turns = record["conversations"]
        for index in range(0, len(turns), 2):
            messages = [dict(turn) for turn in turns[:index + 1]]
            first = messages[0]
            if record.get("image"):
                text = first["content"].replace("<image>", "").strip()
                first["content"] = [path.parent / record["image"], text]
            answer = chat.generate(messages, max_new_tokens=max_new_tokens, **options).text
            correct = normalize(answer) == normalize(turns[index + 1]["content"])
            for key in (record["task"], "all"):
                scores[key][0] += correct
                scores[key][1] += 1
    return {task: {"correct": c, "total": n, "accuracy": c / n} for task, (c, n) in sorted(scores.items())}
