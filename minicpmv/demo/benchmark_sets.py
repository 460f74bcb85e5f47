"""The demo world as VLMEvalKit-format benchmark TSVs, so `minicpmv eval run --benchmark demo`
scores a model with no download. The images are those of the world's test split (same seed,
same document share: the split the bundled model's held-out figures use), regenerated here
image by image from their own random streams.

- demo_yorn: POPE-style "Is there a ... in the image?" about a shape, and a coloured shape, that
  the scene holds and ones it does not (answers Yes/No; category says which kind);
- demo_mcq: colour, shape and count questions as 4-option MCQs (category = task);
- demo_vqa: the documents' short-answer questions (total, price, line, field, cell, sign), ANLS;
- demo_caption: "Describe the image." with the scene's objects ("small red circle at the top
  left"), for CHAIR and for hallucination with every attribute counted.
"""

from __future__ import annotations

import base64
import io
import random
from pathlib import Path

from ..evaluation.tsv import write_table
from .build import split_rng
from .documents import document_questions, random_document
from .scenes import COLOURS, NUMBER_WORDS, SHAPES, questions, random_scene

DEMO_SEED, DEMO_IMAGES, DEMO_DOCUMENT_SHARE = 0, 200, 0.4  # the bundled model's world (scripts/train_demo_model.py)
COLUMNS = {
    "demo_yorn": ["index", "image", "question", "answer", "category"],
    "demo_mcq": ["index", "image", "question", "A", "B", "C", "D", "answer", "category"],
    "demo_vqa": ["index", "image", "question", "answer", "category"],
    "demo_caption": ["index", "image", "question", "objects"],
}


def _png64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _yes_no(scene, rng: random.Random) -> list[dict]:
    held = sorted({t.shape for t in scene.things})
    pairs = sorted({f"{t.colour} {t.shape}" for t in scene.things})
    absent = [s for s in SHAPES if s not in held]
    wrong_pairs = [f"{c} {s}" for c in COLOURS for s in held if f"{c} {s}" not in pairs]
    rows = [("shape", rng.choice(held), "Yes"), ("colour", rng.choice(pairs), "Yes")]
    if absent:
        rows.append(("shape", rng.choice(absent), "No"))
    rows.append(("colour", rng.choice(wrong_pairs), "No"))  # a shape it holds, in a colour it has not
    return [
        {"question": f"Is there a {what} in the image? Please answer yes or no.", "answer": answer, "category": kind}
        for kind, what, answer in rows
    ]


def _choice_row(question: str, right: str, pool: list[str], task: str, rng: random.Random) -> dict:
    options = [right, *rng.sample([p for p in pool if p != right], 3)]
    rng.shuffle(options)
    return {
        "question": question,
        **dict(zip("ABCD", options)),
        "answer": "ABCD"[options.index(right)],
        "category": task,
    }


def _choices(scene, asked, rng: random.Random) -> list[dict]:
    pools = {"colour": sorted(COLOURS), "shape": list(SHAPES), "count": NUMBER_WORDS[:6]}
    return [_choice_row(q, a, pools[task], task, rng) for task, q, a in asked if task in pools]


def demo_rows(
    seed: int = DEMO_SEED, images: int = DEMO_IMAGES, document_share: float = DEMO_DOCUMENT_SHARE
) -> dict[str, list[dict]]:
    """The four sets' rows, deterministic from the world's seed."""
    sets: dict[str, list[dict]] = {name: [] for name in COLUMNS}
    for number in range(images):
        rng = split_rng(seed, "test", number)  # consumed as build_world does: the same image
        if rng.random() < document_share:
            document = random_document(rng)
            image = _png64(document.image)
            extra = [
                {"question": q, "answer": repr([a]), "category": task}
                for task, q, a in document_questions(document, rng)
            ]
            sets["demo_vqa"] += [dict(row, image=image) for row in extra]
            continue
        scene = random_scene(rng)
        image = _png64(scene.render())
        asked = questions(scene, rng)
        own = random.Random(f"{seed}/benchmarks/{number}")  # the sets' own draws: the world's stay as they were
        sets["demo_yorn"] += [dict(row, image=image) for row in _yes_no(scene, own)]
        sets["demo_mcq"] += [dict(row, image=image) for row in _choices(scene, asked, own)]
        objects = [f"{t.size} {t.colour} {t.shape} at the {t.place}" for t in scene.things]
        sets["demo_caption"].append({"image": image, "question": "Describe the image.", "objects": repr(objects)})
    for rows in sets.values():
        for index, row in enumerate(rows):
            row["index"] = index
    return sets


def write_demo_benchmarks(
    output: str | Path, seed: int = DEMO_SEED, images: int = DEMO_IMAGES, document_share: float = DEMO_DOCUMENT_SHARE
) -> dict[str, Path]:
    """Write OUTPUT/<set>.tsv for the four demo sets (atomically); returns their paths."""
    output = Path(output)
    paths = {}
    for name, rows in demo_rows(seed, images, document_share).items():
        paths[name] = output / f"{name}.tsv"
        write_table(paths[name], COLUMNS[name], rows)
    return paths
