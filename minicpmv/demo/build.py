"""The generated visual world as fine-tuning data: train / validation / test splits in the
official JSON format (one file per split, images beside it), every record tagged with its
`task`. Deterministic from a seed; each image belongs to one split only (its random stream is
derived from the split's name and its index), so the splits never share an image.

Tasks: `caption` (pre-training stages), scene questions (`colour`, `shape`, `count`,
`position`), multi-turn `chat` about a scene, document questions (`total`, `price`, `line`,
`field`, `cell`, `sign`), `ocr` transcription and `lookup` (every fact of a receipt, form or
table asked in one conversation, in shuffled order).
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from ..files import write_text_atomic
from .documents import document_questions, fact_questions, page_slice_example, random_document, text_line_example
from .scenes import caption, questions, random_scene, survey_questions

SPLITS = {"train": 2000, "validation": 100, "test": 200}


def split_rng(seed: int, split: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def conversation_record(name: str, image: str, task: str, turns: list[tuple[str, str]]) -> dict:
    conversations = []
    for number, (question, answer) in enumerate(turns):
        conversations.append({"role": "user", "content": ("<image>\n" if number == 0 else "") + question})
        conversations.append({"role": "assistant", "content": answer})
    return {"id": name, "image": image, "task": task, "conversations": conversations}


def scene_records(rng: random.Random, name: str, folder: Path) -> list[dict]:
    scene = random_scene(rng)  # one 448-px view: scenes need no slicing, documents do
    file = f"{name}.png"
    scene.render().save(folder / file)
    asked = questions(scene, rng)
    records = [conversation_record(f"{name}-caption", file, "caption", [("Describe the image.", caption(scene))])]
    records += [conversation_record(f"{name}-{task}-{i}", file, task, [(q, a)]) for i, (task, q, a) in enumerate(asked)]
    chat = rng.sample(asked, min(3, len(asked)))
    records.append(conversation_record(f"{name}-chat", file, "chat", [(q, a) for _, q, a in chat]))
    return records


def document_records(rng: random.Random, name: str, folder: Path) -> list[dict]:
    document = random_document(rng)
    file = f"{name}.png"
    document.image.save(folder / file)
    records = [
        conversation_record(f"{name}-{task}-{i}", file, task, [(q, a)])
        for i, (task, q, a) in enumerate(document_questions(document, rng))
    ]
    records.append(conversation_record(f"{name}-ocr", file, "ocr", [("Read all the text.", "\n".join(document.lines))]))
    facts = fact_questions(document)
    rng.shuffle(facts)  # drawn last: the records above stay as they were before this one existed
    if len(facts) > 1:  # every fact in one conversation, in no page order (research/demo-model-log.md, "Lookup")
        records.append(conversation_record(f"{name}-lookup", file, "lookup", [(q, a) for _, q, a in facts]))
    return records


def build_world(
    output: str | Path, seed: int = 0, sizes: dict[str, int] | None = None, document_share: float = 0.5
) -> dict[str, Path]:
    """Write `output/SPLIT.json` and `output/images/` for each split; returns the JSON paths.
    `sizes` gives the number of images per split (default SPLITS); about `document_share` of
    them are documents, the rest scenes."""
    output = Path(output)
    images = output / "images"
    images.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count in (sizes or SPLITS).items():
        records = []
        for index in range(count):
            rng = split_rng(seed, split, index)
            name = f"images/{split}-{index:05d}"
            make = document_records if rng.random() < document_share else scene_records
            records += make(rng, name, output)
        paths[split] = write_json(output / f"{split}.json", records)
    return paths


READ = "Read the text."


def read_line(rng: random.Random, placement: str = "anywhere"):
    """A 448-px slice holding one receipt line (`text_line_example`), READ and its text."""
    image, labels = text_line_example(rng, placement=placement)
    return image, READ, "".join(c for c in labels["characters"] if c != "none")


def read_page_slice(rng: random.Random):
    """One slice of a page as the processor cuts it (`page_slice_example`), READ and its text."""
    image, _, text = page_slice_example(rng)
    return image, READ, text


def survey_scene(rng: random.Random):
    """A scene and every question about it (`survey_questions`) as one conversation, in shuffled
    order so that each kind is sometimes asked first, with nothing before it but the image."""
    scene = random_scene(rng)
    asked = survey_questions(scene)
    rng.shuffle(asked)
    return scene.render(), [(question, answer) for _, question, answer in asked]


BOUND = ("colour", "shape")  # the survey's questions that find an object by one property and ask the other


def colour_drill(rng: random.Random):
    """A scene of two or more objects, one holding its shape alone, and its survey's colour and
    shape questions (BOUND) in shuffled order: a colour asked by shape, a shape by colour. The
    small LLM named another object's colour in one multi-object scene in five after every other
    kind of training; these alone, on per-object tokens, took colour to 94.7% of 604 fresh scenes
    (research/demo-model-log.md, "Drills")."""
    while True:  # a one-object scene, or one whose shapes all come twice, asks no colour: draw again
        scene = random_scene(rng)
        asked = [(question, answer) for task, question, answer in survey_questions(scene) if task in BOUND]
        if len(scene.things) > 1 and any(question.startswith("What colour") for question, _ in asked):
            rng.shuffle(asked)
            return scene.render(), asked


def build_reading(
    output: str | Path, sizes: dict[str, int], reader=read_page_slice, seed: int = 0, task: str = "read"
) -> dict[str, Path]:
    """Reading for the LLM: an image, question and answer from `reader(rng)` (a page's slice or
    one line to read; a line of a slice to find), or an image and a conversation (a scene's
    survey), tagged `task`, written like a world
    (`output/SPLIT.json`, images beside it). Each split draws from its own stream
    ("lines-SPLIT", or "TASK-SPLIT" for another task), so the splits share no image."""
    output = Path(output)
    (output / "images").mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count in sizes.items():
        records = []
        stream = f"lines-{split}" if task == "read" else f"{task}-{split}"
        for index in range(count):
            image, *asked = reader(split_rng(seed, stream, index))
            turns = asked[0] if len(asked) == 1 else [tuple(asked)]  # a conversation, or one question
            name = f"images/{split}-{index:05d}.png"
            image.save(output / name)
            records.append(conversation_record(name, name, task, turns))
        paths[split] = write_json(output / f"{split}.json", records)  # atomic: a stopped run leaves no half file
    return paths


def write_json(path: Path, records: list[dict]) -> Path:
    write_text_atomic(path, json.dumps(records, ensure_ascii=False, indent=1))
    return path
