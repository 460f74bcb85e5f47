"""Yes/No benchmarks (MME, POPE, HallusionBench), scored as VLMEvalKit does with no judge: an
answer that is neither a clear yes nor a clear no is 'Unknown', and wrong."""

from __future__ import annotations

from collections import defaultdict

from .text import process_punctuation
from .tsv import TableError

MME_PERCEPTION = (
    "OCR",
    "artwork",
    "celebrity",
    "color",
    "count",
    "existence",
    "landmark",
    "position",
    "posters",
    "scene",
)
MME_REASONING = ("code_reasoning", "commonsense_reasoning", "numerical_calculation", "text_translation")


def extract_yes_no(prediction: str) -> str:
    """'Yes' if the word yes is there and no is not, 'No' for the reverse, else 'Unknown'."""
    words = process_punctuation(prediction.lower()).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "no" in words and "yes" not in words:
        return "No"
    return "Unknown"


def score_rows(rows: list[dict]) -> dict:
    """Per row: the extracted answer and whether it equals the gold one."""
    per_row = {}
    for row in rows:
        extracted = extract_yes_no(str(row["prediction"]))
        row["extracted"], row["score"] = extracted, row["answer"] == extracted
        per_row[str(row["index"])] = {"extracted": extracted, "score": row["score"]}
    return per_row


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def mme_metrics(rows: list[dict]) -> dict:
    """Per subtask 100*acc + 100*acc+ (acc+: both questions of an image right, paired by
    category and image_path); perception and reasoning are sums. Every subtask must be there."""
    by_image: dict[str, dict] = defaultdict(dict)
    for row in rows:
        by_image[row["category"]].setdefault(row["image_path"], []).append(row["score"])
    scores = {}
    for category, images in by_image.items():
        acc = _mean(s for pair in images.values() for s in pair)
        if any(len(pair) < 2 for pair in images.values()):
            raise TableError(f"MME {category}: an image_path with one question (acc+ pairs two per image)")
        acc_plus = _mean(pair[0] * pair[1] for pair in images.values())
        scores[category] = 100 * acc + 100 * acc_plus
    missing = [c for c in MME_PERCEPTION + MME_REASONING if c not in scores]
    if missing:
        raise TableError(f"MME needs all 14 subtasks; missing {', '.join(missing)}")
    metrics = {"perception": sum(scores[c] for c in MME_PERCEPTION), "reasoning": sum(scores[c] for c in MME_REASONING)}
    metrics.update(scores)
    return metrics


def _f1(pairs: list[tuple[bool, bool]]) -> tuple[float, float, float]:
    """F1, precision, recall with positive = Yes; an Unknown prediction counts as a No here."""
    tp = sum(gold and pred for gold, pred in pairs)
    fp = sum(not gold and pred for gold, pred in pairs)
    fn = sum(gold and not pred for gold, pred in pairs)
    precision = tp / (tp + fp) if tp + fp else 0
    recall = tp / (tp + fn) if tp + fn else 0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0
    return f1, precision, recall


def pope_metrics(rows: list[dict]) -> dict:
    """Rows are exploded over their comma-joined splits first; Overall is the F1 over the
    exploded rows, acc counts Unknown as wrong. Percentages."""
    exploded = [(split, row) for row in rows for split in str(row["category"]).split(",")]
    metrics = {}
    groups = [("Overall", [r for _, r in exploded])]
    groups += [(s, [r for t, r in exploded if t == s]) for s in sorted({s for s, _ in exploded})]
    for split, members in groups:
        f1, precision, recall = _f1([(r["answer"] == "Yes", r["extracted"] == "Yes") for r in members])
        metrics[f"split={split}|Overall"] = f1 * 100
        metrics[f"split={split}|acc"] = _mean(r["score"] for r in members) * 100
        metrics[f"split={split}|precision"] = precision * 100
        metrics[f"split={split}|recall"] = recall * 100
    return metrics


def _all_right_share(members: list[dict], key) -> float:
    groups: dict[str, list[bool]] = defaultdict(list)
    for row in members:
        groups[key(row)].append(row["score"])
    return _mean(all(g) for g in groups.values()) * 100


def hallusion_metrics(rows: list[dict]) -> dict:
    """aAcc (questions), fAcc (every question of a figure right) and qAcc (a question right on
    every figure), with set/figure/question ids from the index `cat_sub_input_set_figure_q` and
    groups kept apart by l2-category. Overall, per category and per l2-category."""
    for row in rows:
        parts = str(row["index"]).split("_")
        row["_set"], row["_figure"], row["_question"] = parts[3], parts[4], parts[5]
    splits = [("Overall", rows)]
    for column in ("category", "l2-category"):
        if column in rows[0]:
            splits += [(v, [r for r in rows if r[column] == v]) for v in sorted({r[column] for r in rows})]
    metrics = {}
    for split, members in splits:
        metrics[f"split={split}|aAcc"] = _mean(r["score"] for r in members) * 100
        metrics[f"split={split}|fAcc"] = _all_right_share(
            members, lambda r: (r["l2-category"], r["_set"], r["_figure"])
        )
        metrics[f"split={split}|qAcc"] = _all_right_share(
            members, lambda r: (r["l2-category"], r["_set"], r["_question"])
        )
    return metrics
