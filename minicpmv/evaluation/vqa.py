"""Short-answer benchmarks: TextVQA (VQA accuracy), DocVQA (ANLS) and OCRBench (substring hits),
scored as VLMEvalKit scores them."""

from __future__ import annotations

import ast

from .text import levenshtein, normalize_vqa_answer
from .tsv import TableError

ANLS_THRESHOLD = 0.5
OCRBENCH_TEXT_RECOGNITION = (
    "Regular Text Recognition",
    "Irregular Text Recognition",
    "Artistic Text Recognition",
    "Handwriting Recognition",
    "Digit String Recognition",
    "Non-Semantic Text Recognition",
)
OCRBENCH_OTHERS = (
    "Scene Text-centric VQA",
    "Doc-oriented VQA",
    "Key Information Extraction",
    "Handwritten Mathematical Expression Recognition",
)
HME = "Handwritten Mathematical Expression Recognition"


def gold_answers(answer: str) -> list[str]:
    """A list literal of answers, or the one answer when the text is not a list literal."""
    try:
        value = ast.literal_eval(answer)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return [answer]
    return [str(x) for x in value] if isinstance(value, list) else [answer]


def vqa_accuracy(prediction: str, answers: list[str]) -> tuple[float, str]:
    """(score, normalised prediction): mean over the gold answers of min(1, #others equal / 3);
    gold answers are always normalised, even when all ten agree."""
    gold = [normalize_vqa_answer(a) for a in answers]
    pred = normalize_vqa_answer(prediction)
    matches = [min(1, sum(g == pred for j, g in enumerate(gold) if j != i) / 3) for i in range(len(gold))]
    return sum(matches) / len(matches), pred


def normalized_levenshtein(gold: str, prediction: str) -> float:
    """Distance of the normalised strings over the longer length of the raw, upper-cased ones
    (VLMEvalKit's denominator: '   Smyth   ' vs 'Smith' is 1/11, 'ß' counts twice)."""
    a = " ".join(gold.strip().lower().split())
    b = " ".join(prediction.strip().lower().split())
    length = max(len(gold.upper()), len(prediction.upper()))
    return 0.0 if length == 0 else levenshtein(a, b) / length


def anls(prediction: str, answers: list[str]) -> tuple[float, list[float]]:
    """(score, per-gold distances): 1 - the smallest distance, set to 0 only below 0.5."""
    distances = [normalized_levenshtein(a, prediction) for a in answers]
    score = 1 - min(distances)
    return (0.0 if score < ANLS_THRESHOLD else score), distances


def _with_splits(rows: list[dict], scores: list[float]) -> dict:
    metrics = {}
    if "split" in rows[0]:
        for split in sorted({r["split"] for r in rows}, key=str):
            part = [s for r, s in zip(rows, scores) if r["split"] == split]
            metrics[str(split)] = sum(part) / len(part) * 100
    metrics["Overall"] = sum(scores) / len(scores) * 100
    return metrics


def textvqa(rows: list[dict]) -> tuple[dict, dict]:
    per_row, scores = {}, []
    for row in rows:
        score, pred = vqa_accuracy(str(row["prediction"]), gold_answers(str(row["answer"])))
        row["hit"] = score
        scores.append(score)
        per_row[str(row["index"])] = {"score": score, "pred": pred}
    return _with_splits(rows, scores), per_row


def docvqa(rows: list[dict]) -> tuple[dict, dict]:
    per_row, scores = {}, []
    for row in rows:
        prediction = str(row["prediction"])
        score, distances = anls(prediction, gold_answers(str(row["answer"])))
        row["hit"] = score
        scores.append(score)
        per_row[str(row["index"])] = {"score": score, "pred": prediction, "nl": distances}
    return _with_splits(rows, scores), per_row


def ocrbench_hit(prediction: str, answers: list[str], category: str) -> int:
    """1 if any gold answer is a substring of the prediction: case and spacing ignored, except
    for handwritten formulas, where only spaces and newlines are dropped."""
    for answer in answers:
        if category == HME:
            gold, pred = (t.strip().replace("\n", " ").replace(" ", "") for t in (answer, prediction))
        else:
            gold, pred = (t.lower().strip().replace("\n", " ") for t in (answer, prediction))
        if gold in pred:
            return 1
    return 0


def ocrbench(rows: list[dict]) -> tuple[dict, dict]:
    counts = dict.fromkeys(OCRBENCH_TEXT_RECOGNITION + OCRBENCH_OTHERS, 0)
    per_row = {}
    for row in rows:
        answers = gold_answers(str(row["answer"]))
        if not str(row["answer"]).lstrip().startswith("["):
            raise TableError(f"OCRBench row {row['index']}: answer must be a list literal, not {row['answer']!r}")
        if row["category"] not in counts:
            raise TableError(f"OCRBench row {row['index']}: unknown category {row['category']!r}")
        hit = ocrbench_hit(str(row["prediction"]), answers, row["category"])
        counts[row["category"]] += hit
        row["hit"] = hit
        per_row[str(row["index"])] = {"hit": hit}
    metrics = {"Text Recognition": sum(counts[c] for c in OCRBENCH_TEXT_RECOGNITION)}
    metrics.update({c: counts[c] for c in OCRBENCH_OTHERS})
    metrics["Final Score"] = sum(counts.values())
    metrics["Final Score Norm"] = metrics["Final Score"] / 10
    return metrics, per_row
