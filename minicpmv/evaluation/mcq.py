"""Multiple-choice benchmarks (MMBench, AI2D, RealWorldQA, MMMU, and MathVista's choices), scored
as VLMEvalKit does with no judge: an option letter is inferred from the answer by fixed rules,
and an answer they cannot read is 'Z', which is wrong."""

from __future__ import annotations

import re
import string
from collections import defaultdict

from .tsv import isna

REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_SEPARATORS = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
# Case-insensitive but only A-D: "The answer is a photograph." reads as A.
_ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
MMBENCH_L2 = {
    "coarse_perception": "CP",
    "finegrained_perception (instance-level)": "FP-S",
    "finegrained_perception (cross-instance)": "FP-C",
    "logic_reasoning": "LR",
    "relation_reasoning": "RR",
    "attribute_reasoning": "AR",
}
CIRCULAR_STEP = 1_000_000  # MMBench copies: index + k * 1e6, sharing the base question's g_index


def choices_of(row: dict) -> dict:
    """Option letter -> option value, for the letter columns that are present and not NaN."""
    return {c: row[c] for c in string.ascii_uppercase if c in row and not isna(row[c])}


def infer_option(answer: str, choices: dict):
    """The option letter named in `answer`, 'Z' for a refusal, or None.

    A letter counts only when it is the one option letter among the words and stands among the
    last four; else "answer is X" (A-D) is looked for."""
    for refusal in REFUSALS:
        if refusal in answer:
            return "Z"
    words = answer.translate(_SEPARATORS).split()
    named = [c for c in choices if c in words]
    if len(named) == 1:
        if words.index(named[0]) > len(words) - 5:
            return named[0]
    elif not named and "Z" in words:
        return "Z"
    match = _ANSWER_IS.search(answer)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    return None


def infer_text(answer: str, choices: dict):
    """The one option whose text (lower-cased) is inside the answer, if the answer is not longer
    than twice all option texts together; else None."""
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    hits = [k for k, v in choices.items() if str(v).lower() in answer]
    return hits[0] if len(hits) == 1 else None


def can_infer(answer, choices: dict):
    answer = str(answer)
    return infer_option(answer, choices) or infer_text(answer, choices)


def extract_option(row: dict) -> str:
    """VLMEvalKit's extract_answer_from_item with no judge: the inferred letter or 'Z'."""
    return can_infer(str(row["prediction"]).strip(), choices_of(row)) or "Z"


def mmmu_open_as_choice(rows: list[dict]) -> None:
    """MMMU's open questions become A = the gold text, B = 'Other Answers'; the gold letter is
    then 'A' unless the gold answer is itself a capital letter."""
    for row in rows:
        if isna(row.get("A", float("nan"))):
            row["A"], row["B"] = row["answer"], "Other Answers"
        if row["answer"] not in list(string.ascii_uppercase):
            row["answer"] = "A"


def vanilla(rows: list[dict]) -> dict:
    per_row = {}
    for row in rows:
        row["_option"] = extract_option(row)
        row["hit"] = int(row["_option"] == row["answer"])
        per_row[str(row["index"])] = {"option": row["_option"], "hit": row["hit"]}
    return per_row


def circular(rows: list[dict]) -> tuple[dict, list[dict]]:
    """A base question is right only if every copy's prefetched letter is right; one wrong letter
    or one unreadable copy makes it wrong. Returns (per_row, the base rows with their hit)."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: int(r["index"])):
        groups[int(row["index"]) % CIRCULAR_STEP].append(row)
    bases = []
    for g_index, members in groups.items():
        letters = [can_infer(str(r["prediction"]), choices_of(r)) for r in members]
        hit = int(all(letter == r["answer"] for letter, r in zip(letters, members)))
        for row in members:
            row["hit"] = hit
            if int(row["index"]) == g_index:
                bases.append(row)
    per_row = {
        str(r["index"]): {
            "option": extract_option(r),
            "group": str(int(r["index"]) % CIRCULAR_STEP),
            "group_hit": r["hit"],
        }
        for r in rows
    }
    return per_row, bases


def report_accuracy(rows: list[dict]) -> dict:
    """Accuracy (a fraction) per split: Overall, each l2-category (MMBench's abbreviated), each
    category; keys `split=<split>|<group>`, split 'none' without a split column."""
    splits = sorted({r["split"] for r in rows}) if "split" in rows[0] else ["none"]
    metrics = {}
    for split in splits:
        members = [r for r in rows if r.get("split", "none") == split]
        metrics[f"split={split}|Overall"] = sum(r["hit"] for r in members) / len(members)
        for column in ("l2-category", "category"):
            if column not in rows[0]:
                continue
            for value in sorted({r[column] for r in members}, key=str):
                group = [r["hit"] for r in members if r[column] == value]
                metrics[f"split={split}|{MMBENCH_L2.get(value, value)}"] = sum(group) / len(group)
    return metrics
