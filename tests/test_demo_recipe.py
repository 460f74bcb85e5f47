"""`scripts/train_demo_model.py` end to end at a tiny scale: world, starting checkpoint, every
stage through `minicpmv train` with its loss curve, resumption (a finished stage is skipped), the
bundle, and the slicing ablation that reuses stages 0-2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import minicpmv

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_demo_model.py"
STAGES = {
    "stage0": 1,
    "read": 3,
    "stage1": 6,
    "stage2": 6,
    "stage3": 2,
    "documents": 3,
    "lookup": 2,
    "lookup-sft": 1,
    "scenes": 4,
    "scenes-vision": 2,
    "scenes-vision2": 2,
    "objects-align": 2,
    "drill-mix": 2,
    "drill": 1,
    "sft": 1,
    "lookup-again": 1,
    "price-drill": 2,
    "price-keep": 1,
}  # 0.004 x the real step counts (stage3: --reading's)
OBJECT_STEPS = 2  # the object stage (vision pre-training after scenes-vision2): 0.004 x 600, rounded
TINY = [
    "--scale",
    "0.004",
    "--train-images",
    "6",
    "--validation-images",
    "1",
    "--test-images",
    "1",
    "--batch-size",
    "2",
    "--vision-test-images",
    "4",
    "--reading",
    "--read-lines",
    "3",
    "--pages",
    "2",
    "--survey-images",
    "3",
    "--drill-images",
    "3",
]
VISION_STEPS = 8  # 4 labels x 2 steps
REGION_STEPS = 10  # 0.004 x 2400, rounded
READING = {"vision-read": 5}  # what each cell of a page's slice holds
VISION_STAGES = ["vision", "vision-regions", *READING]


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo-run")
    run("--work", str(work), *TINY, "--bundle", str(work / "bundle"))
    return work


def load_recipe():
    """The recipe module (minicpmv.demo.recipe; the script is a wrapper around its main)."""
    import minicpmv.demo.recipe as recipe

    return recipe


def recipe_of(stage: Path) -> dict:
    latest = stage / (stage / "latest").read_text().strip()
    return torch.load(latest / "trainer_state.pt", weights_only=False)["recipe"]


@pytest.mark.slow  # faster: test_demo_recipe.py's stage-data tests, test_training.py::test_recipes_train_their_parts_and_the_loss_falls
def test_every_stage_ran_with_its_recipe(trained):
    for name, steps in STAGES.items():
        assert (trained / name / "latest").read_text().strip() == f"checkpoint-{steps:06d}"
        assert len((trained / name / "metrics.jsonl").read_text().splitlines()) == steps
        assert (trained / name / "loss.png").stat().st_size > 0
    for name in STAGES:  # --reading: the encoder and resampler stay as the reading stage left them, but for
        trains = ("vpm", "resampler", "llm") if name.startswith("scenes-vision") else ("llm",)  # the scenes at the end
        assert tuple(recipe_of(trained / name)["train"]) == trains
    assert {r["task"] for r in json.loads((trained / "read.json").read_text())} == {"read"}
    assert recipe_of(trained / "stage1")["scale_resolution"] == 224
    assert recipe_of(trained / "stage3")["max_slice_nums"] == 9
    stage1 = json.loads((trained / "stage1.json").read_text())
    scenes = {"caption", "count", "colour", "shape", "position", "chat"}
    assert stage1 and all(r["task"] in scenes for r in stage1)
    stage2 = json.loads((trained / "stage2.json").read_text())
    read = [r for r in stage2 if r["task"] == "read"]
    assert len(read) == 3 and {r["task"] for r in stage2} - {"read"} <= scenes  # page-slice reading joins the scenes
    assert all(Image.open(r["image"]).size == (448, 448) and r["conversations"][1]["content"] for r in read)
    assert all(Path(r["image"]).is_file() for r in stage2)
    stage3 = {r["task"] for r in json.loads((trained / "stage3.json").read_text())}
    assert stage3 & {"ocr", "total"} and stage3 & {"count", "colour"}  # documents, scene questions kept
    assert "read" in stage3 and "read" in {r["task"] for r in json.loads((trained / "sft.json").read_text())}
    documents = json.loads((trained / "documents.json").read_text())
    pages = [r for r in documents if Path(r["image"]).is_relative_to((trained / "pages").resolve())]
    assert pages and {r["task"] for r in pages} <= {"ocr", "total", "price", "line", "field", "cell", "sign"}
    assert {r["task"] for r in documents} & scenes and "read" in {r["task"] for r in documents}
    assert all(Path(r["image"]).is_file() for r in documents)
    lookup = json.loads((trained / "lookup.json").read_text())
    asked = [r for r in lookup if r["task"] == "lookup"]  # every fact of a page, twice over
    assert asked and len(asked) == 2 * len({(r["id"], r["image"]) for r in asked})
    assert {r["task"] for r in lookup} - {"lookup"} == {r["task"] for r in documents}
    scene_stage = json.loads((trained / "scenes.json").read_text())  # the world's scenes and the surveys
    surveyed = [r for r in scene_stage if r["task"] == "survey"]
    assert len(surveyed) == 3 and all(Path(r["image"]).is_relative_to((trained / "survey").resolve()) for r in surveyed)
    assert {r["task"] for r in scene_stage} - {"survey"} <= scenes and len(scene_stage) > len(surveyed)
    scene_vision = {r["task"] for r in json.loads((trained / "scenes-vision.json").read_text())}
    assert "survey" in scene_vision and "read" in scene_vision and scene_vision - {"survey", "read"} <= scenes
    assert (trained / "scenes-vision2.json").read_text() == (trained / "scenes-vision.json").read_text()
    assert recipe_of(trained / "scenes-vision2")["seed"] == recipe_of(trained / "scenes-vision")["seed"] + 1
    lookup_sft = {r["task"] for r in json.loads((trained / "lookup-sft.json").read_text())}  # SFT before the scenes
    assert {"lookup", "read", "colour"} <= lookup_sft and not lookup_sft & {"survey", "drill"}
    sft = {r["task"] for r in json.loads((trained / "sft.json").read_text())}
    assert "survey" not in sft and "drill" in sft
    drills = json.loads((trained / "drill.json").read_text())
    assert len(drills) == 3 and {r["task"] for r in drills} == {"drill"}
    assert all(Path(r["image"]).is_relative_to((trained / "drill").resolve()) for r in drills)
    drill_mix = {r["task"] for r in json.loads((trained / "drill-mix.json").read_text())}
    assert {"drill", "survey", "read"} <= drill_mix and drill_mix - {"drill", "survey", "read"} <= scenes
    again = json.loads((trained / "lookup-again.json").read_text())  # the lookup stage's data and the drills, after SFT
    assert [r for r in again if r["task"] != "drill"] == lookup and [r for r in again if r["task"] == "drill"] == drills
    price_drill = json.loads((trained / "price-drill.json").read_text())  # price questions alone, lookups twice
    assert price_drill and all(r["conversations"][0]["content"].startswith("<image>\nHow much is") for r in price_drill)
    assert {r["task"] for r in price_drill} == {"price", "lookup"}
    assert [r for r in price_drill if r["task"] == "price"] == [r for r in lookup if r["task"] == "price"]
    kept = json.loads((trained / "price-keep.json").read_text())
    assert kept[: len(again) + len(price_drill)] == again + price_drill
    added = kept[len(again) + len(price_drill) :]  # the scenes' counts and surveys kept by the last stage
    assert {r["task"] for r in added} == {"count", "survey"} and all(Path(r["image"]).is_file() for r in added)


def labels_trained(stage: Path) -> list[str]:
    return [json.loads(line)["label"] for line in (stage / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # faster: test_demo_recipe.py's stage-data tests, test_training.py::test_recipes_train_their_parts_and_the_loss_falls
def test_vision_pretraining_comes_first_and_stage0_starts_from_it(trained):
    vision, regions, last = trained / "vision", trained / "vision-regions", list(READING)[-1]
    assert (vision / "latest").read_text().strip() == f"checkpoint-{VISION_STEPS:06d}"
    assert labels_trained(vision) == ["shape", "shape", "column", "column", "row", "row", "colour", "colour"]
    assert set(json.loads((vision / "accuracy.json").read_text())[-1]) >= {
        "shape@224",
        "column@448",
        "row@448",
        "colour@224",
    }
    assert labels_trained(regions) == ["regions"] * REGION_STEPS
    assert set(json.loads((regions / "accuracy.json").read_text())[-1]) >= {"regions@224", "regions@448"}
    for name, steps in READING.items():
        assert labels_trained(trained / name) == ["cells"] * steps
        assert set(json.loads((trained / name / "accuracy.json").read_text())[-1]) >= {
            "cells@448",
            "cells@448-marked",
            "regions@448",
        }
    initial = load_file(trained / "initial" / "model.safetensors")
    localized = load_file(trained / "initial-localized" / "model.safetensors")  # queries pointed at their blocks
    assert all(torch.equal(localized[name], initial[name]) for name in localized if not name.startswith("resampler."))
    assert not torch.equal(localized["resampler.query"], initial["resampler.query"])
    one_object = load_file(vision / f"checkpoint-{VISION_STEPS:06d}" / "model.safetensors")
    query = one_object["resampler.query"].float()  # the vision stage started from the pointed queries
    assert (query - localized["resampler.query"].float()).norm() < (query - initial["resampler.query"].float()).norm()
    start = load_file(trained / last / f"checkpoint-{READING[last]:06d}" / "model.safetensors")
    stage0 = load_file(trained / "stage0" / "checkpoint-000001" / "model.safetensors")
    vision_weights = [name for name in start if name.startswith(("vpm.", "resampler."))]
    assert vision_weights and all(torch.equal(start[name], stage0[name]) for name in vision_weights)
    last_frozen = load_file(trained / "scenes" / f"checkpoint-{STAGES['scenes']:06d}" / "model.safetensors")
    assert all(torch.equal(start[name], last_frozen[name]) for name in vision_weights)  # --reading keeps them
    scene_vision = load_file(
        trained / "scenes-vision2" / f"checkpoint-{STAGES['scenes-vision2']:06d}" / "model.safetensors"
    )
    assert not all(torch.equal(start[name], scene_vision[name]) for name in vision_weights)  # but the last scenes
    objects = load_file(trained / "objects" / f"checkpoint-{OBJECT_STEPS:06d}" / "model.safetensors")
    assert labels_trained(trained / "objects") == ["objects"] * OBJECT_STEPS
    assert set(json.loads((trained / "objects" / "accuracy.json").read_text())[-1]) >= {"objects@448"}
    assert not all(
        torch.equal(scene_vision[name], objects[name]) for name in vision_weights
    )  # told each block's object
    assert all(torch.equal(scene_vision[name], objects[name]) for name in objects if name.startswith("llm."))
    final = load_file(trained / "sft" / "checkpoint-000001" / "model.safetensors")
    assert all(torch.equal(objects[name], final[name]) for name in vision_weights)  # frozen again after it
    assert not all(torch.equal(stage0[name], final[name]) for name in final if name.startswith("llm."))
    assert not all(
        torch.equal(start[name], one_object[name]) for name in vision_weights
    )  # regions, reading trained on it


@pytest.mark.slow  # faster: test_demo_recipe.py's stage-data tests, test_training.py::test_recipes_train_their_parts_and_the_loss_falls
def test_bundle_loads_in_bfloat16(trained):
    config = json.loads((trained / "bundle" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert not (trained / "bundle" / "trainer_state.pt").exists()
    answer = minicpmv.load(trained / "bundle").generate(
        [{"role": "user", "content": "Write a sentence from the world."}], max_new_tokens=2
    )
    assert answer.token_ids


@pytest.mark.slow  # faster: test_demo_recipe.py's stage-data tests, test_training.py::test_recipes_train_their_parts_and_the_loss_falls
def test_a_second_run_skips_finished_stages(trained):
    before = {name: (trained / name / "metrics.jsonl").read_text() for name in [*VISION_STAGES, "objects", *STAGES]}
    output = run("--work", str(trained), *TINY)
    assert "minicpmv train" not in output and "vision pre-training" not in output  # nothing started again
    assert {
        name: (trained / name / "metrics.jsonl").read_text() for name in [*VISION_STAGES, "objects", *STAGES]
    } == before


@pytest.mark.slow  # faster: test_demo_recipe.py's stage-data tests, test_training.py::test_recipes_train_their_parts_and_the_loss_falls
def test_single_view_ablation_reuses_stages_0_to_2(trained, tmp_path):
    work = tmp_path / "single"
    run("--work", str(work), *TINY, "--reuse", str(trained), "--max-slice-nums", "1")
    for shared in (*VISION_STAGES, "initial-localized", "reading", "stage2"):
        assert (work / shared).is_symlink() and (work / shared).resolve() == (trained / shared).resolve()
    for stage in ("stage3", "documents", "lookup", "scenes", "scenes-vision2", "sft", "lookup-again"):
        assert recipe_of(work / stage)["max_slice_nums"] == 1


def test_without_reading_no_stage_sees_the_lines(tmp_path):
    """The default recipe (the bundled model's) has no reading: stage data comes from the world alone."""
    recipe = load_recipe()
    (tmp_path / "world").mkdir()
    (tmp_path / "lines").mkdir()
    (tmp_path / "world" / "train.json").write_text(
        json.dumps([{"id": "a", "image": "a.png", "task": "colour", "conversations": []}])
    )
    (tmp_path / "lines" / "train.json").write_text(
        json.dumps([{"id": "b", "image": "b.png", "task": "read", "conversations": []}])
    )
    train, lines = tmp_path / "world" / "train.json", tmp_path / "lines" / "train.json"

    def tasks_of(tasks, reading):
        return [
            r["task"] for r in json.loads(recipe.stage_data(train, tasks, tmp_path / "out.json", reading).read_text())
        ]

    assert tasks_of(("colour", "read"), None) == ["colour"] and tasks_of(None, None) == ["colour"]
    assert tasks_of(("colour", "read"), lines) == ["colour", "read"] and tasks_of(None, lines) == ["colour", "read"]
    assert tasks_of(("colour",), lines) == ["colour"]
    data = json.loads((tmp_path / "out.json").read_text())
    assert data[0]["image"] == str((tmp_path / "world" / "a.png").resolve())


def test_without_reading_stages_1_to_3_train_the_vision_parts_too():
    recipe = load_recipe()
    settings = {name: extra for name, _, _, _, extra in recipe.stages(False)}
    assert list(settings) == ["stage0", "stage1", "stage2", "stage3", "sft"]
    assert "train=[resampler,llm]" in settings["stage1"] and "train=[vpm,resampler,llm]" in settings["stage2"]
    assert [name for name, *_ in recipe.stages(True)] == [
        "stage0",
        "read",
        "stage1",
        "stage2",
        "stage3",
        "documents",
        "lookup",
        "lookup-sft",
        "scenes",
        "scenes-vision",
        "scenes-vision2",
        "objects",
        "objects-align",
        "drill-mix",
        "drill",
        "sft",
        "lookup-again",
        "price-drill",
        "price-keep",
    ]


def test_the_documents_stage_adds_the_pages_and_keeps_some_scenes(tmp_path):
    recipe = load_recipe()
    for folder, records in {"world": [("colour", 5), ("total", 2)], "pages": [("price", 1), ("colour", 1)]}.items():
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.json").write_text(
            json.dumps(
                [
                    {"id": f"{task}{i}", "image": f"{task}{i}.png", "task": task, "conversations": []}
                    for task, count in records
                    for i in range(count)
                ]
            )
        )

    def chosen(seed):
        target = recipe.stage_data(
            tmp_path / "world" / "train.json",
            ("colour", "total", "price"),
            tmp_path / "out.json",
            None,
            tmp_path / "pages" / "train.json",
            scene_records=2,
            seed=seed,
        )
        return [(r["task"], Path(r["image"]).parent.name) for r in json.loads(target.read_text())]

    tasks = [task for task, _ in chosen(0)]
    assert tasks.count("colour") == 2 and tasks.count("total") == 2 and ("price", "pages") in chosen(0)
    assert chosen(0) == chosen(0) and any(chosen(seed) != chosen(0) for seed in range(1, 6))


def test_repeats_multiply_a_task_and_refuse_a_world_without_it(tmp_path):
    recipe = load_recipe()
    (tmp_path / "train.json").write_text(
        json.dumps(
            [
                {"id": f"{task}{i}", "image": f"{task}{i}.png", "task": task, "conversations": []}
                for task, count in (("lookup", 2), ("total", 3))
                for i in range(count)
            ]
        )
    )
    target = recipe.stage_data(
        tmp_path / "train.json", ("lookup", "total"), tmp_path / "out.json", repeats={"lookup": 3}
    )
    ids = [r["id"] for r in json.loads(target.read_text())]
    assert sorted(ids) == sorted(["lookup0", "lookup1"] * 3 + ["total0", "total1", "total2"])
    with pytest.raises(SystemExit, match="no 'lookup' records"):
        recipe.stage_data(tmp_path / "train.json", ("total",), tmp_path / "out.json", repeats={"lookup": 2})


def test_demo_images_are_the_bundled_ones(tmp_path, monkeypatch):
    import minicpmv.bundled as bundled

    recipe = load_recipe()
    for name in ("DEMO_IMAGE", "DEMO_RECEIPT"):
        monkeypatch.setattr(bundled, name, tmp_path / getattr(bundled, name).name)
    recipe.write_demo_image(0)
    for written in tmp_path.iterdir():  # what --bundle writes is what the package ships
        shipped = Path(minicpmv.__file__).parent / "assets" / written.name
        assert np.array_equal(np.asarray(Image.open(written)), np.asarray(Image.open(shipped))), written.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-receipt.png", "demo-scene.png"]
