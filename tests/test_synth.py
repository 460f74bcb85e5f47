"""The generated visual world: deterministic, splits disjoint, answers true to the ground truth,
documents too fine for one 448-px view, records readable by the training data loader."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from minicpmv.cli import main
from minicpmv.demo.build import build_reading, build_world, colour_drill, split_rng, survey_scene
from minicpmv.demo.documents import (
    CELL,
    CELL_CHARACTERS,
    document_questions,
    form,
    page_slice_example,
    page_slices,
    receipt,
    sign,
    slice_question_example,
    slice_questions,
    slice_text,
    table,
)
from minicpmv.demo.scenes import NUMBER_WORDS, SHAPES, caption, questions, random_scene, survey_questions
from minicpmv.processing.processor import MiniCPMVProcessor
from minicpmv.processing.slicing import plan_slices
from minicpmv.training.data import ChatDataset, SampleBuilder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return root, build_world(root, seed=5, sizes={"train": 16, "validation": 4, "test": 8})


def digest(folder: Path, records: list[dict]) -> set[str]:
    return {hashlib.sha1((folder / r["image"]).read_bytes()).hexdigest() for r in records}


def test_same_seed_same_world(world, tmp_path):
    root, paths = world
    again = build_world(tmp_path, seed=5, sizes={"train": 16, "validation": 4, "test": 8})
    for split in paths:
        first, second = json.loads(paths[split].read_text()), json.loads(again[split].read_text())
        assert first == second
        assert digest(root, first) == digest(tmp_path, second)
    other = build_world(tmp_path / "other", seed=6, sizes={"train": 16})
    assert json.loads(other["train"].read_text()) != json.loads(paths["train"].read_text())


def test_splits_share_no_image(world):
    root, paths = world
    hashes = {split: digest(root, json.loads(path.read_text())) for split, path in paths.items()}
    assert not hashes["train"] & hashes["test"] and not hashes["train"] & hashes["validation"]
    assert not hashes["validation"] & hashes["test"]


def test_every_task_is_present_and_records_load(world):
    root, paths = world
    records = [r for path in paths.values() for r in json.loads(path.read_text())]
    tasks = {r["task"] for r in records}
    assert {"caption", "count", "colour", "position", "shape", "chat", "ocr"} <= tasks
    assert tasks & {"total", "price", "line", "field", "cell", "sign"}
    processor = MiniCPMVProcessor.from_pretrained(TINY["2.6"] / "checkpoint")
    dataset = ChatDataset(paths["test"], SampleBuilder(processor, max_length=8192))
    assert all(dataset[i] is not None for i in range(len(dataset)))


def assert_true_of(scene, task: str, question: str, answer: str) -> None:
    """The answer follows from the scene's object list."""
    if task == "count" and question == "How many shapes are there?":
        assert answer == NUMBER_WORDS[len(scene.things)]
    elif task == "count" and any(question == f"How many {s}s are there?" for s in SHAPES):
        shape = question.split()[2][:-1]
        assert answer == NUMBER_WORDS[sum(t.shape == shape for t in scene.things)]
    elif task == "count" and question.endswith(" things are there?"):
        colour = question.split()[2]
        assert answer == NUMBER_WORDS[sum(t.colour == colour for t in scene.things)]
    elif task == "colour":
        shape = question.split()[-1][:-1]
        assert [t.colour for t in scene.things if t.shape == shape] == [answer]
    elif task == "shape":
        colour = question.split()[-1][:-1]
        assert [t.shape for t in scene.things if t.colour == colour] == [answer]
    elif task == "position":
        shape = question.split()[-1][:-1]
        assert [f"at the {t.place}" for t in scene.things if t.shape == shape] == [answer]
    else:
        raise AssertionError(f"unexpected question {task}: {question}")


@pytest.mark.parametrize("seed", range(20))
def test_scene_answers_follow_the_object_list(seed):
    rng = random.Random(seed)
    scene = random_scene(rng)
    for task, question, answer in questions(scene, rng):
        assert_true_of(scene, task, question, answer)
    assert caption(scene).count(" at the ") == len(scene.things)


@pytest.mark.parametrize("seed", range(20))
def test_a_survey_asks_every_question_once_and_each_answer_is_true(seed):
    scene = random_scene(random.Random(seed))
    survey = survey_questions(scene)
    for task, question, answer in survey:
        assert_true_of(scene, task, question, answer)
    asked = [question for _, question, _ in survey]
    assert len(asked) == len(set(asked))
    once = [t.shape for t in scene.things if sum(u.shape == t.shape for u in scene.things) == 1]
    assert {q for q in asked if q.startswith("What colour")} == {f"What colour is the {s}?" for s in once}
    # whatever `questions` asks of a scene, the survey asks too (but for its one random absent colour)
    drawn = [
        q for _, q, a in questions(scene, random.Random(seed)) if not (q.endswith("things are there?") and a == "zero")
    ]
    assert set(drawn) <= set(asked)


def test_survey_records_are_shuffled_conversations_the_loader_reads(tmp_path):
    paths = build_reading(tmp_path, {"train": 6}, survey_scene, seed=3, task="survey")
    records = json.loads(paths["train"].read_text())
    assert len(records) == 6 and all(r["task"] == "survey" for r in records)
    in_order = 0
    for index, record in enumerate(records):  # the same scene again from the record's own stream
        scene = random_scene(split_rng(3, "survey-train", index))
        asked = [t["content"].removeprefix("<image>\n") for t in record["conversations"][::2]]
        survey = [question for _, question, _ in survey_questions(scene)]
        assert sorted(asked) == sorted(survey)
        in_order += asked == survey
    assert in_order < len(records)  # shuffled: not the survey's own order
    for record in records:
        turns = record["conversations"]
        assert turns[0]["content"].startswith("<image>\n") and sum("<image>" in t["content"] for t in turns) == 1
        assert len(turns) >= 2 * 7  # four shape counts, a colour, an absent colour, all shapes at least
    processor = MiniCPMVProcessor.from_pretrained(TINY["2.6"] / "checkpoint")
    dataset = ChatDataset(paths["train"], SampleBuilder(processor, max_length=8192))
    assert all(dataset[i] is not None for i in range(len(dataset)))


def test_a_drill_asks_colours_by_shape_and_shapes_by_colour_of_several_objects():
    lengths = set()
    for index in range(20):
        image, turns = colour_drill(split_rng(4, "drill-train", index))
        replay = split_rng(4, "drill-train", index)  # the scenes it drew, skipped ones first
        scene = random_scene(replay)
        while scene.render().tobytes() != image.tobytes():
            scene = random_scene(replay)
        assert len(scene.things) > 1
        bound = [(q, a) for task, q, a in survey_questions(scene) if task in ("colour", "shape")]
        assert sorted(turns) == sorted(bound) and any(q.startswith("What colour") for q, _ in turns)
        for question, answer in turns:
            assert_true_of(scene, "colour" if question.startswith("What colour") else "shape", question, answer)
        lengths.add(len(turns))
    assert len(lengths) > 1


@pytest.mark.parametrize("make", [receipt, form, table, sign])
def test_documents_are_high_resolution_and_answers_are_their_text(make):
    rng = random.Random(1)
    document = make(rng)
    width, height = document.image.size
    assert width * height >= 1_000_000  # about 5x more pixels than one 448-px view holds
    text = "\n".join(document.lines)
    for task, question, answer in document_questions(document, rng):
        assert answer in text, (task, question, answer)


def test_receipt_total_is_the_sum_and_signs_are_extreme():
    rng = random.Random(2)
    document = receipt(rng)
    assert abs(sum(float(p) for p in document.facts["prices"].values()) - float(document.facts["total"])) < 0.005
    assert sign(rng, vertical=False).image.size == (4032, 448)
    assert sign(rng, vertical=True).image.size == (448, 4032)


@pytest.mark.parametrize("make", [receipt, form, table, sign])
def test_pages_are_whole_slices_and_each_character_sits_in_its_cell(make):
    """The processor cuts a page into its 448-px slices without resizing it, and all ink lies in
    the cells the document says hold a character: every character is one patch of one slice."""
    for seed in range(3):
        document = make(random.Random(seed))
        plan = plan_slices(document.image.size, 9, 448, CELL)
        assert plan.refine_size == document.image.size and plan.slice_boxes() == page_slices(document)
        ink = np.asarray(document.image.convert("L")) < 100
        rows, columns = np.nonzero(ink)
        assert {(int(c) // CELL, int(r) // CELL) for r, c in zip(rows, columns)} == set(document.cells)
        written = "".join(document.lines).replace(" ", "")
        assert sorted("".join(document.cells.values())) == sorted(written)


def test_a_page_slice_example_names_each_cell_and_reads_its_rows():
    image, labels, text = page_slice_example(random.Random(4))
    assert image.size == (448, 448) and len(labels["cells"]) == 256
    assert set(labels["cells"]) <= set(CELL_CHARACTERS) and set(labels["cells"]) != {"none"}
    rows = [
        "".join(" " if c == "none" else c for c in labels["cells"][r * 16 : (r + 1) * 16]).strip() for r in range(16)
    ]
    assert text == "\n".join(row for row in rows if row)
    document = receipt(random.Random(0))
    shown = "".join(slice_text(document, box) for box in page_slices(document)).replace("\n", "").replace(" ", "")
    assert sorted(shown) == sorted("".join(document.lines).replace(" ", ""))  # every character in one slice


def test_slice_questions_ask_about_a_whole_line_of_their_slice():
    asked = 0
    for seed in range(6):
        for make in (receipt, form):
            document = make(random.Random(seed))
            for box, (task, question, answer) in slice_questions(document):
                rows = slice_text(document, box).split("\n")
                line = next(row for row in rows if row.endswith(answer) and len(row) > len(answer))
                assert line in document.lines  # whole: as the page has it
                word = question.split(" ")[-1 if task == "price" else 3].rstrip("?")
                assert line.lower().startswith(word.lower()) and (task, question, answer) in [
                    *document_questions_all(document)
                ]
                asked += 1
    assert asked > 10
    image, question, answer = slice_question_example(random.Random(1))
    assert image.size == (448, 448) and question.endswith("?") and answer


def test_lookup_asks_every_fact_of_a_document_once_in_shuffled_order(tmp_path):
    build_world(tmp_path, seed=3, sizes={"train": 12}, document_share=1.0)
    records = json.loads((tmp_path / "train.json").read_text())
    transcripts = {r["image"]: r["conversations"][1]["content"] for r in records if r["task"] == "ocr"}
    lookups = [r for r in records if r["task"] == "lookup"]
    assert lookups and all(r["id"].endswith("-lookup") for r in lookups)
    in_page_order = []
    for record in lookups:
        image, ocr = record["image"], transcripts[record["image"]]
        turns = record["conversations"]
        questions = [t["content"].replace("<image>\n", "") for t in turns[::2]]
        answers = [t["content"] for t in turns[1::2]]
        assert turns[0]["content"].startswith("<image>\n") and "<image>" not in "".join(questions)
        assert len(set(questions)) == len(questions) > 1
        for question, answer in zip(questions, answers):  # each answer is on the line its question names
            word = question.split()[-1].rstrip("?") if question.startswith("How much") else None
            if word:
                assert f"{word}  {answer}" in ocr
            assert answer in ocr
        singles = [r for r in records if r["image"] == image and r["task"] in ("price", "total", "field", "cell")]
        for single in singles:  # the world's one-question records are among the lookup's turns
            asked = single["conversations"][0]["content"].replace("<image>\n", "")
            assert answers[questions.index(asked)] == single["conversations"][1]["content"]
        kind_total = sum(q.startswith("How much") for q in questions) + ("What is the total?" in questions)
        assert kind_total in (0, ocr.count("\n"))  # a receipt: every item and the total; else none
        in_page_order.append(answers == sorted(answers, key=ocr.index))
    assert not all(in_page_order)


def document_questions_all(document):
    """Every question the world may ask about a receipt or form, whichever it drew."""
    if document.kind == "receipt":
        yield "total", "What is the total?", document.facts["total"]
        for item, price in document.facts["prices"].items():
            yield "price", f"How much is the {item}?", price
    else:
        for key, value in document.facts["fields"].items():
            yield "field", f"What is the {key} on the form?", value


def test_cli_writes_the_splits(tmp_path, capsys):
    assert main(["synth", "-o", str(tmp_path), "--train", "3", "--validation", "0", "--test", "2", "--seed", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"train", "test"} and summary["test"]["records"] > 0
    first = json.loads((tmp_path / "train.json").read_text())[0]
    assert Image.open(tmp_path / first["image"]).size[0] > 0
    assert main(["synth", "-o", str(tmp_path), "--document-share", "2"]) == 2


def test_demo_starting_checkpoint(world, tmp_path):
    import minicpmv
    from minicpmv.demo.demo import init_checkpoint
    from minicpmv.processing.tokenizer import V26_SPECIAL_TOKENS

    root, paths = world
    folder = init_checkpoint(tmp_path / "initial", [paths["train"]], seed=0, vocab_size=600)
    assert (folder / "model.safetensors").stat().st_size <= 25 * (1 << 20)
    chat = minicpmv.load(folder)
    assert all(chat.tokenizer.token_to_id(token) is not None for token in V26_SPECIAL_TOKENS)
    assert chat.tokenizer.vocab_size <= 600  # fewer where the world has no more merges to learn
    assert len(chat.tokenizer.encode("What is the total?")) < 10  # merges learned from the world's text
    digits = chat.tokenizer.encode("TOTAL  45.67")
    assert [chat.tokenizer.decode([t]).strip() for t in digits][-5:] == list("45.67")  # one token per digit, as Qwen2
    record = json.loads(paths["test"].read_text())[0]
    answer = chat.generate(
        [{"role": "user", "content": [root / record["image"], "Describe the image."]}], max_new_tokens=3
    )
    assert answer.image_tokens >= 64


def test_memory_estimate_follows_the_recipe():
    from minicpmv.model.checkpoint import load_model
    from minicpmv.training.memory import estimate_memory
    from minicpmv.training.recipes import recipe
    from minicpmv.training.trainer import set_trainable

    model = load_model(TINY["2.6"] / "checkpoint")
    sft, stage1 = recipe("sft"), recipe("stage1")
    set_trainable(model, sft)
    full = estimate_memory(model, sft)
    lean = estimate_memory(model, recipe("sft", {"gradient_checkpointing": True}))
    assert lean["activations"] < full["activations"] and lean["optimizer"] == full["optimizer"]
    set_trainable(model, stage1)
    small = estimate_memory(model, stage1)
    assert small["optimizer"] == 8 * sum(p.numel() for p in model.resampler.parameters())
    assert small["total"] == sum(v for k, v in small.items() if k != "total")


def test_exact_match_scoring(world):
    from minicpmv.demo.evaluate import evaluate, normalize

    class Oracle:  # answers from the references: scoring must give 100%, and 0% when always wrong
        def __init__(self, answers, wrong=False):
            self.answers, self.wrong = answers, wrong

        def generate(self, messages, **options):
            from types import SimpleNamespace

            content = messages[0]["content"]
            key = (tuple(map(str, content)) if isinstance(content, list) else content, len(messages))
            return SimpleNamespace(text="nope" if self.wrong else self.answers[key] + ".")

    root, paths = world
    records = json.loads(paths["test"].read_text())
    answers = {}
    for record in records:
        turns = record["conversations"]
        first = turns[0]["content"].replace("<image>", "").strip()
        content = (str(paths["test"].parent / record["image"]), first) if record.get("image") else first
        for index in range(0, len(turns), 2):
            answers[(content, index + 1)] = turns[index + 1]["content"]
    scores = evaluate(Oracle(answers), paths["test"])
    assert scores["all"]["accuracy"] == 1.0 and scores["all"]["total"] >= len(records)
    listed = []
    assert evaluate(Oracle(answers, wrong=True), paths["test"], limit=5, answers=listed)["all"]["accuracy"] == 0.0
    assert listed and all(row["answer"] == "nope" and not row["correct"] for row in listed)
    assert normalize(" Red. ") == "red"


def test_wilson_interval_brackets_the_score_and_narrows_with_more_questions():
    from minicpmv.demo.evaluate import wilson_interval

    low, high = wilson_interval(24, 40)
    assert low < 0.6 < high and abs(low - 0.446) < 0.002 and abs(high - 0.737) < 0.002
    wide, narrow = wilson_interval(24, 40), wilson_interval(240, 400)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert wilson_interval(0, 13)[0] == 0.0 < wilson_interval(0, 13)[1] and wilson_interval(13, 13)[1] == 1.0
    with pytest.raises(ValueError, match="at least one question"):
        wilson_interval(0, 0)


def test_character_places_count_reference_characters_at_their_place():
    from minicpmv.demo.evaluate import character_places

    rows = [
        {"task": "total", "reference": "41.12", "answer": "14.12."},  # 3 of 5 at their place
        {"task": "sign", "reference": "EXIT", "answer": "exi"},
    ]  # case ignored, a missing one wrong
    places = character_places(rows)
    assert places["total"] == 3 / 5 and places["sign"] == 3 / 4 and places["all"] == 6 / 9
