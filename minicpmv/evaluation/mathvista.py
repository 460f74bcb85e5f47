"""MathVista, the rule-based part only: VLMEvalKit's prefetch, which reads a choice letter or an
integer/float straight from the answer. Published MathVista numbers also use a GPT judge for
answers the rules cannot read; these are lower bounds of those."""

from __future__ import annotations

import ast
import string

from .mcq import can_infer


def _choices(row: dict) -> dict:
    return {string.ascii_uppercase[i]: v for i, v in enumerate(ast.literal_eval(str(row["choices"])))}


def _number(kind: str, value):
    """int()/float() as Python applies them to the raw value: ' 14', '+14', '0014', '1_4' and
    Arabic-Indic digits are 14; '14.0' is not an integer."""
    return int(value) if kind == "integer" else float(value)


def prefetch(row: dict):
    """What the prefetch stores for a row: the inferred letter (right or wrong), the number when
    it equals the gold one, else None. A stored 0 counts as a failed prefetch, as in VLMEvalKit."""
    prediction = row["prediction"]
    if row["question_type"] == "multi_choice":
        return can_infer(prediction, _choices(row)) or None
    if row["answer_type"] in ("integer", "float"):
        try:
            value, gold = _number(row["answer_type"], prediction), _number(row["answer_type"], row["answer"])
        except (ValueError, TypeError, OverflowError):
            return None
        return value if value == gold and value else None
    return None  # text and list answers: VLMEvalKit compares str(None) with the answer


def is_right(row: dict, stored) -> bool:
    if stored is None:
        return False
    if row["question_type"] == "multi_choice":
        return can_infer(str(stored), _choices(row)) == row["answer_option"]
    return True  # a stored number equals the gold one by construction


def _skills(row: dict) -> list:
    try:
        return list(ast.literal_eval(str(row["skills"])))
    except SyntaxError:
        return [row["skills"]]


def mathvista(rows: list[dict]) -> tuple[dict, dict]:
    totals: dict[str, list[int]] = {"Overall": [0, 0, 0]}  # tot, prefetch, hit
    per_row = {}
    for row in rows:
        stored = prefetch(row)
        hit = is_right(row, stored)
        for key in ["Overall", *_skills(row), row["task"]]:
            counts = totals.setdefault(str(key), [0, 0, 0])
            counts[0] += 1
            counts[1] += stored is not None
            counts[2] += hit
        per_row[str(row["index"])] = {
            "prefetch": stored is not None,
            "res": None if stored is None else str(stored),
            "hit": hit,
        }
    metrics = {}
    for key, (tot, fetched, hit) in totals.items():
        prefix = f"Task&Skill={key}|"
        metrics.update(
            {
                prefix + "tot": tot,
                prefix + "prefetch": fetched,
                prefix + "hit": hit,
                prefix + "prefetch_rate": fetched / tot * 100,
                prefix + "acc": hit / tot * 100,
            }
        )
    return metrics, per_row
