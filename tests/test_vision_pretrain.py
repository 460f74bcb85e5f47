"""Vision pre-training with label heads (minicpmv/training/vision_pretrain.py): the encoder and
resampler learn labels they can only get from the pixels, the LLM is untouched, labels are added
one after another, and a finished run is saved once and then reused."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from minicpmv.demo.build import split_rng
from minicpmv.demo.documents import CELL_CHARACTERS, LINE_CHARACTERS, LINE_PLACES, text_line_example
from minicpmv.demo.scenes import (
    COLOURS,
    COLUMNS,
    LABELS,
    OBJECT_LABELS,
    REGION_LABELS,
    ROWS,
    object_grid_example,
    one_object_example,
    region_scene_example,
)
from minicpmv.demo.vision_pretrain import (
    KEPT,
    TokenGridHead,
    VisionPretraining,
    pretrain_vision,
    run_vision_pretraining,
)
from minicpmv.errors import ConfigError
from minicpmv.model.checkpoint import load_model
from minicpmv.processing.processor import MiniCPMVProcessor
from minicpmv.training.data import to_messages

CHECKPOINT = TINY["2.6"] / "checkpoint"
CLASSES = {"colour": ("red", "blue"), "side": ("left", "right")}


def examples(split: str, index: int):
    """A red or blue disc on the left or right half: both labels need the pixels."""
    rng = random.Random(f"{split}/{index}")
    colour, side = rng.choice(CLASSES["colour"]), rng.choice(CLASSES["side"])
    image = Image.new("RGB", (112, 112), (240, 240, 240))
    left = 4 if side == "left" else 60
    ImageDraw.Draw(image).ellipse((left, 30, left + 48, 78), fill=(220, 30, 30) if colour == "red" else (30, 60, 220))
    return image, {"colour": colour, "side": side}


def two_halves(split: str, index: int):
    """A red disc, a blue disc or nothing in each half: a class per region."""
    rng = random.Random(f"halves/{split}/{index}")
    held = (rng.choice(HALVES), rng.choice(HALVES))
    image = Image.new("RGB", (112, 112), (240, 240, 240))
    for left, what in zip((4, 60), held):
        if what != "none":
            ImageDraw.Draw(image).ellipse(
                (left, 30, left + 48, 78), fill=(220, 30, 30) if what == "red" else (30, 60, 220)
            )
    return image, {"halves": held}


HALVES = ("none", "red", "blue")


def settings(**changes) -> VisionPretraining:
    values = {
        "labels": ("colour", "side"),
        "steps_per_label": 25,
        "batch_size": 8,
        "learning_rate": 2e-3,
        "resolutions": (56, 112),
        "test_images": 20,
    }
    return VisionPretraining(**{**values, **changes})


def test_the_vision_parts_learn_the_labels_and_the_llm_is_untouched():
    model = load_model(CHECKPOINT).float()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    records = []
    scores = pretrain_vision(
        model, MiniCPMVProcessor.from_pretrained(CHECKPOINT), examples, CLASSES, settings(), records.append
    )
    assert [r["label"] for r in records] == ["colour"] * 25 + ["side"] * 25
    assert [s["after"] for s in scores] == ["colour", "side"]
    assert set(scores[0]) == {"step", "after", "colour@56", "colour@112"}  # only the heads trained so far
    final = scores[-1]
    assert min(final[f"colour@{size}"] for size in (56, 112)) >= 0.9, final
    assert min(final[f"side@{size}"] for size in (56, 112)) >= 0.8, final
    changed = {name.split(".")[0] for name, value in model.state_dict().items() if not torch.equal(before[name], value)}
    assert changed == {"vpm", "resampler"}


def test_a_probe_trains_only_the_heads():
    model = load_model(CHECKPOINT).float()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    records = []
    scores = pretrain_vision(
        model,
        MiniCPMVProcessor.from_pretrained(CHECKPOINT),
        examples,
        CLASSES,
        settings(labels=("colour",), probe=True),
        records.append,
    )
    losses = [r["loss"] for r in records]
    assert len(losses) == 25 and sum(losses[-5:]) < sum(losses[:5])  # the head learns
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert "colour@112" in scores[-1]


def test_a_kept_label_is_in_the_loss_from_the_first_step():
    model = load_model(CHECKPOINT).float()
    records = []
    scores = pretrain_vision(
        model,
        MiniCPMVProcessor.from_pretrained(CHECKPOINT),
        examples,
        CLASSES,
        settings(labels=("side",), kept=("colour",), steps_per_label=40),
        records.append,
    )
    assert [r["label"] for r in records] == ["side"] * 40 and [s["after"] for s in scores] == ["side"]
    assert min(scores[0][f"colour@{size}"] for size in (56, 112)) >= 0.9, scores  # learnt beside "side"
    with pytest.raises(ConfigError, match="unknown label"):
        pretrain_vision(
            model,
            MiniCPMVProcessor.from_pretrained(CHECKPOINT),
            examples,
            CLASSES,
            settings(labels=("side",), kept=("shape",)),
        )


def test_a_region_label_is_learnt_per_region():
    model = load_model(CHECKPOINT).float()
    scores = pretrain_vision(
        model,
        MiniCPMVProcessor.from_pretrained(CHECKPOINT),
        two_halves,
        {"halves": HALVES},
        settings(labels=("halves",), steps_per_label=40),
        lambda record: None,
    )
    # each class holds a third of the regions: naming 70% right takes telling the halves apart
    assert min(scores[-1][f"halves@{size}"] for size in (56, 112)) >= 0.7, scores
    assert {"halves@56-marked", "halves@112-marked"} <= set(scores[-1])  # the regions not "none", on their own


def test_a_token_grid_head_names_each_cell_from_its_own_token():
    """Token (row, column) of an 8x8 grid of queries names the 2x2 cells of its block; the
    logits come back cell by cell, row by row, over the 16x16 cells."""
    head = TokenGridHead(dim=4, classes=1, regions=256, queries=64)
    with torch.no_grad():
        head.classify.weight.copy_(torch.eye(4))
        head.classify.bias.zero_()
    tokens = torch.zeros(1, 64, 4)
    for row in range(16):
        for column in range(16):
            tokens[0, (row // 2) * 8 + column // 2, (row % 2) * 2 + column % 2] = row * 16 + column
    assert torch.equal(head(tokens)[0, :, 0], torch.arange(256.0))
    with pytest.raises(ConfigError, match="blocks"):
        TokenGridHead(dim=4, classes=3, regions=100, queries=64)


def test_a_lighter_none_class_makes_the_head_name_the_marked_cells():
    """Cells of a 112-px image (8x8 patches, one token each, read by a TokenGridHead), a quarter
    of them red, the rest blank: at full weight the blank class wins the start of training and
    the head names few red cells; with "none" weighted down it names them. A weight needs a
    "none" class."""

    def cells(split: str, index: int):
        rng = random.Random(f"cells/{split}/{index}")
        held = tuple(rng.choice(("none", "none", "none", "red")) for _ in range(64))
        image = Image.new("RGB", (112, 112), (240, 240, 240))
        for number, what in enumerate(held):
            if what == "red":
                left, top = 14 * (number % 8), 14 * (number // 8)
                ImageDraw.Draw(image).rectangle((left, top, left + 13, top + 13), fill=(220, 30, 30))
        return image, {"cells": held}

    processor = MiniCPMVProcessor.from_pretrained(CHECKPOINT)
    marked = {}
    for weight in (1.0, 0.1):
        scores = pretrain_vision(
            load_model(CHECKPOINT).float(),
            processor,
            cells,
            {"cells": ("none", "red")},
            settings(
                labels=("cells",),
                steps_per_label=30,
                resolutions=(112,),
                none_weight={"cells": weight},
                per_token=("cells",),
            ),
            lambda record: None,
        )
        marked[weight] = scores[-1]["cells@112-marked"]
    assert marked[0.1] >= marked[1.0] + 0.3, marked
    with pytest.raises(ConfigError, match="none"):
        pretrain_vision(
            load_model(CHECKPOINT).float(), processor, examples, CLASSES, settings(none_weight={"colour": 0.1})
        )


def test_unknown_labels_and_empty_settings_are_config_errors():
    model = load_model(CHECKPOINT).float()
    with pytest.raises(ConfigError, match="unknown label"):
        pretrain_vision(
            model, MiniCPMVProcessor.from_pretrained(CHECKPOINT), examples, CLASSES, settings(labels=("shape",))
        )
    with pytest.raises(ConfigError, match="at least one label"):
        settings(labels=())
    with pytest.raises(ConfigError, match="steps_per_label"):
        settings(steps_per_label=0)


def test_a_finished_run_is_saved_once_and_reused(tmp_path):
    chosen = settings(steps_per_label=2, test_images=4)
    first = run_vision_pretraining(CHECKPOINT, tmp_path, examples, CLASSES, chosen)
    assert first.name == "checkpoint-000004" and (tmp_path / "latest").read_text().strip() == first.name
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
    assert [s["after"] for s in json.loads((tmp_path / "accuracy.json").read_text())] == ["colour", "side"]
    assert (first / "tokenizer.json").exists()  # loads like the checkpoint it started from
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert run_vision_pretraining(CHECKPOINT, tmp_path, examples, CLASSES, chosen) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_one_object_examples_carry_every_label():
    image, labels = one_object_example(split_rng(0, "vision-train", 3))
    assert image.size == (448, 448)
    assert set(labels) == set(LABELS) and all(labels[name] in LABELS[name] for name in LABELS)
    again, same = one_object_example(split_rng(0, "vision-train", 3))
    assert same == labels and again.tobytes() == image.tobytes()


def test_region_examples_name_what_each_region_holds():
    for index in range(20):
        image, labels = region_scene_example(split_rng(0, "vision-regions-train", index))
        held = [value for value in labels["regions"] if value != "none"]
        assert len(labels["regions"]) == len(ROWS) * len(COLUMNS) and 1 <= len(held) <= 4
        assert all(value in REGION_LABELS["regions"] for value in labels["regions"])
    # the last image: each named object is drawn in its colour inside its region
    pixels = image.load()
    for number, value in enumerate(labels["regions"]):
        if value != "none":
            colour = COLOURS[value.split()[0]]
            row, column = divmod(number, len(COLUMNS))
            cell = [
                (x, y) for x in range(column * 149, (column + 1) * 149, 3) for y in range(row * 149, (row + 1) * 149, 3)
            ]
            assert any(pixels[point] == colour for point in cell), value


def test_object_grids_name_the_object_covering_each_block():
    named = set()
    for index in range(30):
        image, labels = object_grid_example(split_rng(0, "objects-train", index))
        assert len(labels["objects"]) == 64 and all(value in OBJECT_LABELS["objects"] for value in labels["objects"])
        pixels = image.convert("RGB").load()
        for number, value in enumerate(labels["objects"]):
            row, column = divmod(number, 8)
            block = [
                pixels[x, y] for x in range(column * 56, column * 56 + 56, 2) for y in range(row * 56, row * 56 + 56, 2)
            ]
            if value == "none":  # no object covers as much as 15% of it (two of one colour may, together)
                assert max(block.count(colour) for colour in COLOURS.values()) < 0.2 * len(block), (index, number)
            else:  # the named colour covers at least about 15% of the block
                assert block.count(COLOURS[value.split()[0]]) >= 0.12 * len(block), (index, number, value)
                named.add(value.split()[1])
    assert named == {"circle", "square", "triangle", "star"}
    again, same = object_grid_example(split_rng(0, "objects-train", 29))
    assert same == labels and again.tobytes() == image.tobytes()


def ink_box(image) -> tuple[int, int, int, int]:
    return image.convert("L").point(lambda value: 255 if value < 128 else 0).getbbox()


def test_text_line_examples_spell_their_line():
    image, labels = text_line_example(split_rng(0, "read-test", 3), placement="fixed")
    characters = labels["characters"]
    assert len(characters) == LINE_PLACES and all(c in LINE_CHARACTERS for c in characters)
    assert re.fullmatch(r"[a-z]+ \d+\.\d\d", "".join(c for c in characters if c != "none"))
    left, top, _, _ = ink_box(image)
    assert 8 <= left <= 12 and 213 <= top <= 225  # fixed: at the left middle
    boxes = {ink_box(text_line_example(split_rng(0, "read-test", i))[0])[:2] for i in range(5)}
    assert len(boxes) == 5  # anywhere: each line somewhere else


def test_text_line_placements_move_by_whole_patches_or_by_less():
    def offsets(placement, **options):  # how far each line's ink moved from where "fixed" puts the same line
        moved = set()
        for index in range(30):  # the text is drawn before the place: the same line both times
            box = ink_box(text_line_example(split_rng(0, "read-test", index), placement=placement, **options)[0])
            fixed = ink_box(text_line_example(split_rng(0, "read-test", index), placement="fixed")[0])
            moved.add((box[0] - fixed[0], box[1] - fixed[1]))
        return moved

    grid, phase = offsets("grid"), offsets("phase")
    assert len(grid) > 10 and all(dx % 28 == 0 and dy % 28 == 0 for dx, dy in grid)
    assert len(phase) > 10 and all(0 <= dx < 28 and -14 <= dy < 14 for dx, dy in phase)
    small = offsets("phase", shift=4)  # the first step of the reading curriculum
    assert len(small) > 5 and all(0 <= dx <= 4 and -2 <= dy <= 2 for dx, dy in small)
    assert offsets("phase", shift=0) == {(0, 0)}
    with pytest.raises(ValueError, match="placement"):
        text_line_example(split_rng(0, "read-test", 0), placement="diagonal")
    with pytest.raises(ValueError, match="shift"):
        text_line_example(split_rng(0, "read-test", 0), placement="phase", shift=28)


def test_reading_probe_script_runs(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "probe_demo_reading.py"
    done = subprocess.run(
        [sys.executable, str(script), str(CHECKPOINT), "-o", str(tmp_path), "--steps", "2", "--test", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "characters@448" in done.stdout and "most common character" in done.stdout
    assert json.loads((tmp_path / "accuracy.json").read_text())[-1]["after"] == "characters"


def test_reading_probe_of_a_frozen_checkpoint_trains_only_its_head(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "probe_demo_reading.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            str(CHECKPOINT),
            "-o",
            str(tmp_path),
            "--frozen-cells",
            "--steps",
            "2",
            "--test",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"cells@448", "cells@448-marked"} <= set(json.loads((tmp_path / "accuracy.json").read_text())[-1])
    probed = load_file(tmp_path / "checkpoint-000002" / "model.safetensors")
    original = load_file(CHECKPOINT / "model.safetensors")
    assert all(torch.equal(probed[name].float(), original[name].float()) for name in original)  # frozen


@pytest.mark.parametrize("placement", [None, "anywhere"])
def test_reading_data_script_writes_official_records(tmp_path, placement):
    """Slices of pages by default, one line per slice with --placement."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_reading_data.py"
    done = subprocess.run(
        [
            sys.executable,
            str(script),
            "-o",
            str(tmp_path),
            "--train",
            "3",
            "--test",
            "2",
            *(["--placement", placement] if placement else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    train, test = (json.loads((tmp_path / f"{split}.json").read_text()) for split in ("train", "test"))
    assert (len(train), len(test)) == (3, 2)
    for record in train + test:
        messages = to_messages(record, tmp_path)
        assert messages[0]["content"][0].is_file() and messages[0]["content"][1] == "Read the text."
        assert Image.open(messages[0]["content"][0]).size == (448, 448)
        text = messages[1]["content"]
        if placement:
            assert re.fullmatch(r"[a-z]+ \d+\.\d\d", text)
        else:
            assert text and set(text) <= set(CELL_CHARACTERS) | {" ", "\n"}
    pixels = {(tmp_path / r["image"]).read_bytes() for r in train + test}
    assert len(pixels) == 5  # the splits share no image


def test_find_data_asks_document_questions_about_slices(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_reading_data.py"
    done = subprocess.run(
        [sys.executable, str(script), "-o", str(tmp_path), "--train", "4", "--test", "2", "--find"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    records = [r for split in ("train", "test") for r in json.loads((tmp_path / f"{split}.json").read_text())]
    assert len(records) == 6 and {r["task"] for r in records} == {"find"}
    for record in records:
        question = to_messages(record, tmp_path)[0]["content"][1]
        assert re.fullmatch(r"How much is the [a-z]+\?|What is the total\?|What is the [a-z]+ on the form\?", question)


def test_free_queries_alone_train_and_the_first_tokens_stay():
    model = load_model(CHECKPOINT).float()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    queries = model.config.query_num
    records = []
    pretrain_vision(
        model,
        MiniCPMVProcessor.from_pretrained(CHECKPOINT),
        examples,
        CLASSES,
        settings(labels=("colour",), free_queries=queries // 4),
        records.append,
    )
    after = model.state_dict()
    changed = {name for name, value in after.items() if not torch.equal(before[name], value)}
    assert changed == {"resampler.query"}
    fixed = queries - queries // 4
    assert torch.equal(after["resampler.query"][:fixed], before["resampler.query"][:fixed])
    assert not torch.equal(after["resampler.query"][fixed:], before["resampler.query"][fixed:])
    assert not model.resampler.query._backward_hooks  # the gradient mask is gone: later training moves every row
    with pytest.raises(ConfigError, match="fewer than"):
        pretrain_vision(
            model,
            MiniCPMVProcessor.from_pretrained(CHECKPOINT),
            examples,
            CLASSES,
            settings(labels=("colour",), free_queries=queries),
        )


def test_kept_tokens_drift_less_than_free_ones():
    drift = {}
    for weight in (0.0, 100.0):  # 0: measured, not in the loss
        model = load_model(CHECKPOINT).float()
        records = []
        pretrain_vision(
            model,
            MiniCPMVProcessor.from_pretrained(CHECKPOINT),
            examples,
            CLASSES,
            settings(labels=("colour",), kept_tokens=model.config.query_num // 2, kept_tokens_weight=weight),
            records.append,
        )
        assert all("kept_tokens_drift" in record for record in records)
        drift[weight] = sum(record["kept_tokens_drift"] for record in records[-5:]) / 5
    assert drift[100.0] < drift[0.0] / 3, drift
    records = []

    def free_on_the_right(split: str, index: int):
        image, labels = examples(split, index)
        return image, {**labels, KEPT: labels["side"] == "left"}

    pretrain_vision(
        model,
        MiniCPMVProcessor.from_pretrained(CHECKPOINT),
        free_on_the_right,
        CLASSES,
        settings(labels=("colour",), kept_tokens=2, batch_size=1),
        records.append,
    )
    held = [record["kept_tokens_drift"] for record in records if "kept_tokens_drift" in record]
    assert 0 < len(held) < len(records)  # a right-hand disc alone in its batch holds nothing
    with pytest.raises(ConfigError, match="kept_tokens"):
        pretrain_vision(
            model,
            MiniCPMVProcessor.from_pretrained(CHECKPOINT),
            examples,
            CLASSES,
            settings(labels=("colour",), kept_tokens=model.config.query_num + 1),
        )
