"""CHAIR (Object HalBench style): which objects a description names that the image does not
hold. Rule-based path of the RLHF-V / RLAIF-V protocol, with our own word pipeline (regex
words, a singular form from suffix rules and a small irregular table, greedy two-word merges)
and the synonym table as data: `data/<name>_synonyms.txt`, one line per object, its canonical
name first."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from .tsv import TableError, isna

DATA = Path(__file__).parent / "data"
_WORD = re.compile(r"[a-z]+")
IRREGULAR = {
    "mice": "mouse",
    "knives": "knife",
    "people": "person",
    "men": "man",
    "women": "woman",
    "children": "child",
    "geese": "goose",
    "teeth": "tooth",
    "feet": "foot",
    "leaves": "leaf",
    "skis": "ski",
    "buses": "bus",
    "glasses": "glass",
    "boxes": "box",
    "dice": "die",
    "sheep": "sheep",
    "wolves": "wolf",
    "shelves": "shelf",
    "loaves": "loaf",
    "scissors": "scissors",
}


def singular(word: str) -> str:
    """A noun's singular by English suffix rules (enough for object names, not a full lemmatizer)."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@cache
def synonym_table(name: str = "demo") -> dict[str, str]:
    """word or two-word phrase -> canonical object name, from `data/<name>_synonyms.txt` (or a path)."""
    path = Path(name) if Path(name).suffix == ".txt" else DATA / f"{name}_synonyms.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TableError(f"{path}: cannot read the synonym table ({exc})") from None
    table = {}
    for line in lines:
        if line.strip() and not line.startswith("#"):
            canonical, *words = [w.strip().lower() for w in line.split(",")]
            for word in [canonical, *words]:
                table[" ".join(singular(w) for w in word.split())] = canonical
    return table


def mentioned_objects(text: str, table: dict[str, str]) -> list[str]:
    """Canonical objects a text names, in order, each mention once (two-word names first)."""
    words = [singular(w) for w in _WORD.findall(text.lower())]
    found, i = [], 0
    while i < len(words):
        pair = " ".join(words[i : i + 2])
        if i + 1 < len(words) and pair in table:
            found.append(table[pair])
            i += 2
            continue
        if words[i] in table:
            found.append(table[words[i]])
        i += 1
    return found


def ground_truth(value, table: dict[str, str]) -> set[str]:
    """The image's objects: a list literal or comma-joined names, mapped to canonical names."""
    if value is None or isna(value):
        return set()
    text = str(value)
    try:
        names = ast.literal_eval(text) if text.lstrip().startswith("[") else text.split(",")
    except (ValueError, SyntaxError):
        names = text.split(",")
    truth = set()
    for name in names:
        truth.update(mentioned_objects(str(name), table))
    return truth


# The demo world's descriptions name objects as "a large red circle at the top left"
_DEMO_OBJECT = re.compile(
    r"\b(?:an?|the)\s+(?:(small|large)\s+)?(\w+)\s+(circle|square|triangle|star)s?"
    r"(?:\s+at\s+the\s+((?:top|middle|bottom)\s+(?:left|center|right)|center))?",
    re.I,
)


def demo_objects(text: str) -> list[str]:
    """Each object a demo-world description names, with every attribute it gives:
    'large red circle at the top left' (size and place only when stated)."""
    found = []
    for size, colour, shape, place in _DEMO_OBJECT.findall(text):
        thing = " ".join(w for w in (size.lower(), colour.lower(), shape.lower()) if w)
        found.append(thing + (f" at the {place.lower()}" if place else ""))
    return found


def attribute_hallucination(rows: list[dict]) -> tuple[dict, dict]:
    """Hallucination with every attribute counted (demo world): an object named with a size,
    colour, shape or place that no object of the image has is wrong. Percentages of responses
    with a wrong object and of named objects that are wrong."""
    per_row, named, wrong, bad = {}, 0, 0, 0
    for row in rows:
        truth = set(ast.literal_eval(str(row["objects"])))
        objects = demo_objects(str(row["prediction"]))
        mistaken = [o for o in objects if o not in truth]
        named, wrong, bad = named + len(objects), wrong + len(mistaken), bad + bool(mistaken)
        per_row[str(row["index"])] = {"objects": objects, "wrong": mistaken}
    return {
        "attribute_response_rate": 100 * bad / len(rows),
        "attribute_mention_rate": 100 * wrong / named if named else 0.0,
    }, per_row


def chair_metrics(rows: list[dict], table_name: str = "demo") -> tuple[dict, dict]:
    """CHAIRs (responses with a hallucinated object), the response hallucination rate among
    responses naming any object, CHAIRi = the mention hallucination rate, and object recall; all
    percentages. Per row: the objects named, those hallucinated, and `hit` (no hallucination)."""
    table = synonym_table(table_name)
    per_row, mentions, wrong_mentions = {}, 0, 0
    hallucinated_responses = naming_responses = covered = truth_total = 0
    for row in rows:
        truth = ground_truth(row["objects"], table)
        named = mentioned_objects(str(row["prediction"]), table)
        wrong = [o for o in named if o not in truth]
        mentions += len(named)
        wrong_mentions += len(wrong)
        naming_responses += bool(named)
        hallucinated_responses += bool(wrong)
        covered += len(truth & set(named))
        truth_total += len(truth)
        row["hit"] = int(not wrong)
        per_row[str(row["index"])] = {"mentioned": named, "hallucinated": wrong, "hit": row["hit"]}
    metrics = {
        "CHAIRs": 100 * hallucinated_responses / len(rows),
        "CHAIRi": 100 * wrong_mentions / mentions if mentions else 0.0,
        "response_hallucination_rate": 100 * hallucinated_responses / naming_responses if naming_responses else 0.0,
        "recall": 100 * covered / truth_total if truth_total else 0.0,
        "responses": len(rows),
        "mentions": mentions,
    }
    metrics["mention_hallucination_rate"] = metrics["CHAIRi"]
    if table_name.startswith("demo") and all(" at the " in str(row["objects"]) for row in rows):
        extra, attribute_rows = attribute_hallucination(rows)
        metrics.update(extra)
        for index, fields in attribute_rows.items():
            per_row[index]["wrong_attributes"] = fields["wrong"]
    return metrics, per_row
