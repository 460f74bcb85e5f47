"""Build the demo model from nothing, through the toolkit's own commands (issue: bundled demo model).

    python scripts/train_demo_model.py [--work runs/demo] [--seed 0] [--scale 1.0] [--reading] [--bundle]

1. `minicpmv synth`: the generated world (train / validation / test splits);
2. the untrained checkpoint: tokenizer trained on the world's text, seeded random weights;
3. vision pre-training (ours, not the paper's): the vision encoder and resampler learn each
   object's shape, column, row and colour from one-object scenes through classifier heads, then
   what each region of scenes of several objects holds, standing in for the pre-trained SigLIP
   the paper starts from (minicpmv/training/vision_pretrain.py);
4. stage0 (ours, not the paper's): the LLM alone learns the world's language from text-only
   samples, standing in for the pre-trained LLM the paper starts from;
5. the paper's stage1 (224 px, scenes) -> stage2 (448 px, scenes) -> stage3 (adaptive slicing,
   documents, with the scene questions kept) -> sft (everything, all tasks);
6. with --bundle: the result, in bfloat16, becomes the package's bundled demo model.

Unlike the paper, stages 1-3 train the LLM too: the paper's LLM is pre-trained and only has to
learn to read visual tokens, ours is a few minutes old. With it frozen, a from-scratch encoder
and resampler did not move the loss in 600 steps (measured). As in the paper, stage1 keeps the
(pre-trained) vision encoder frozen and stage2 unfreezes it. The stages keep the paper's
schedule of resolution (224 px, then 448 px, then slicing) and data, except that stage3 keeps
the scene questions: on captions and documents alone it cost them 7 points (88.5% -> 81.5% of
held-out scene questions, colour 90% -> 81%), which SFT did not bring back (measured).
With --reading, the encoder and resampler stay as the reading stage left them, a stage of
page-slice reading for the LLM alone comes after stage0, and stages of documents (from a world
of document images of its own, WORK/pages), then of their every fact, after stage3, then two
of scenes with every question about each asked in one conversation (WORK/survey), one that
tells each scene token its object (a vision stage), drills on colour by shape (WORK/drill), SFT,
a short lookup stage again, a drill on prices and a last mixed stage (see `stages`).

Each stage is `minicpmv train ... --resume`, so running the script again after an interruption
continues where it stopped; a finished stage is skipped. Every stage keeps its loss curve
(`WORK/STAGE/loss.png`). `--scale` multiplies every stage's step count.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from minicpmv.demo.vision_stages import object_stage, vision_stages


class Stage(NamedTuple):
    """One row of the recipe: a `minicpmv train` run (or, for recipe "vision", a vision
    pre-training run) with its data and settings."""

    name: str  # also the folder WORK/NAME
    recipe: str  # a training recipe (stage1, stage2, stage3, sft) or "vision"
    tasks: object  # tasks in its data: a tuple, "text" (every answer as text), or None (all)
    steps: int
    settings: list  # extra `minicpmv train` flags


SCENES = ("caption", "count", "colour", "shape", "position", "chat")
DOCUMENTS = ("ocr", "total", "price", "line", "field", "cell", "sign")
EVERYTHING = ["--set", "train=[vpm,resampler,llm]"]  # see the module docstring
READ_STAGE3_STEPS = 600  # --reading: stage3, the first with whole pages, gets more time for them
STAGES = [
    Stage("stage0", "sft", "text", 300, ["--set", "train=[llm]", "--lr", "2e-3", "--batch-size", "8"]),
    Stage("stage1", "stage1", SCENES, 1500, ["--set", "train=[resampler,llm]", "--lr", "3e-4"]),
    Stage("stage2", "stage2", (*SCENES, "read"), 1500, [*EVERYTHING, "--lr", "3e-4"]),
    Stage(
        "stage3", "stage3", (*SCENES, *DOCUMENTS, "read"), 100, [*EVERYTHING, "--lr", "3e-4"]
    ),  # scenes kept: see above
    Stage("sft", "sft", None, 150, ["--lr", "2e-4"]),
]
LLM_ONLY = ["--set", "train=[llm]", "--set", "cache_image_features=true"]  # vision frozen: encode each image once
READ_STAGE = Stage("read", "stage2", ("read",), 800, [*LLM_ONLY, "--lr", "1e-3"])  # --reading, after stage0
# --reading, after stage3: the world's and the pages world's documents, the page slices and
# DOCUMENT_STAGE_SCENES scene records (see `stages`)
DOCUMENT_STAGE = Stage("documents", "stage3", (*DOCUMENTS, "read", *SCENES), 800, [*LLM_ONLY, "--lr", "1e-3"])
DOCUMENT_STAGE_SCENES = 3000  # of the world's ~11,600 scene records: kept in the loss, the pages come first
# --reading, after the documents stage: the same data plus every document's facts asked in one
# conversation (task "lookup"), twice over, so that fields, cells and prices are found by their
# word or place (research/demo-model-log.md, "Lookup")
LOOKUP_STAGE = Stage("lookup", "stage3", (*DOCUMENTS, "read", *SCENES, "lookup"), 400, [*LLM_ONLY, "--lr", "1e-3"])
LOOKUP_REPEATS = {"lookup": 2}
# --reading, after the lookup stage: the scenes again, the world's scene records and a survey of
# each of WORK/survey's scenes (every question about it in one conversation), first for the LLM
# alone, then for every part with the page slices kept in, as two runs of 500 steps with the
# second's data order from seed + 1 (research/demo-model-log.md, "Surveys")
LOOKUP_SFT_STAGE = Stage("lookup-sft", "sft", None, 150, [*LLM_ONLY, "--lr", "2e-4"])
SCENE_STAGE = Stage("scenes", "sft", (*SCENES, "survey"), 1000, [*LLM_ONLY, "--lr", "1e-3"])
SCENE_VISION_STAGE = Stage("scenes-vision", "sft", (*SCENES, "survey", "read"), 500, [*EVERYTHING, "--lr", "3e-4"])
SCENE_VISION_AGAIN_STAGE = Stage("scenes-vision2", *SCENE_VISION_STAGE[1:])
SEED_OFFSETS = {SCENE_VISION_AGAIN_STAGE[0]: 1}  # added to --seed: that stage's data order
# --reading, last: SFT loses the lookups the lookup stage taught (prices, fields, cells); a short
# lookup stage after it gives them back (research/demo-model-log.md, "Surveys")
LOOKUP_AGAIN_STAGE = Stage("lookup-again", "stage3", (*LOOKUP_STAGE[2], "drill"), 150, [*LLM_ONLY, "--lr", "5e-4"])
# --reading, after scenes-vision: the small LLM named another object's colour in multi-object
# scenes. First every resampler token of a scene learns what object covers its block, colour and
# shape (OBJECT_STAGE: vision pre-training, object_or_page_example, the page slices' tokens held
# as they were), the LLM reads the new tokens (OBJECT_ALIGN_STAGE), then drills on colour by
# shape (WORK/drill, colour_drill): mixed in, then alone, then in SFT's and lookup-again's data;
# only the two together fixed it (research/demo-model-log.md, "Drills").
OBJECT_STAGE = Stage("objects", "vision", None, 600, [])
OBJECT_ALIGN_STAGE = Stage("objects-align", "sft", (*SCENES, "survey", "read"), 500, [*LLM_ONLY, "--lr", "5e-4"])
DRILL_MIX_STAGE = Stage("drill-mix", "sft", (*SCENES, "survey", "read", "drill"), 500, [*LLM_ONLY, "--lr", "5e-4"])
DRILL_STAGE = Stage("drill", "sft", ("drill",), 300, [*LLM_ONLY, "--lr", "1e-3"])
# --reading, last: a price is found by its item's word and was mostly read from the next slice.
# A stage of price questions alone (PRICE_DRILL_STAGE: the world's and the pages' receipt lookups,
# twice, and price records), then PRICE_KEEP_STAGE (lookup-again's data with the price drill's,
# PRICE_KEEP_COUNTS count questions and PRICE_KEEP_SURVEYS surveys) to give the other answers
# back (research/demo-model-log.md, "Prices").
PRICE_QUESTION = "How much is"  # a price record's and a receipt lookup's first question
PRICE_DRILL_STAGE = Stage("price-drill", "stage3", ("price", "lookup"), 600, [*LLM_ONLY, "--lr", "1e-3"])
PRICE_KEEP_STAGE = Stage("price-keep", "stage3", LOOKUP_AGAIN_STAGE[2], 200, [*LLM_ONLY, "--lr", "5e-4"])
PRICE_KEEP_COUNTS, PRICE_KEEP_SURVEYS = 4000, 2000
LOOKUPS = (LOOKUP_STAGE[0], LOOKUP_AGAIN_STAGE[0], PRICE_DRILL_STAGE[0], PRICE_KEEP_STAGE[0])  # pages, lookups twice
SURVEYED = (
    SCENE_STAGE[0],
    SCENE_VISION_STAGE[0],
    SCENE_VISION_AGAIN_STAGE[0],
    OBJECT_ALIGN_STAGE[0],
    DRILL_MIX_STAGE[0],
)
DRILLED = (DRILL_MIX_STAGE[0], DRILL_STAGE[0], "sft", LOOKUP_AGAIN_STAGE[0], PRICE_KEEP_STAGE[0])
UNSLICED = ("stage0", READ_STAGE[0], "stage1", "stage2")  # every later stage slices (--max-slice-nums applies)


def stages(reading: bool) -> list:
    """STAGES, or with --reading the reading recipe: the LLM alone learns to read page slices
    (READ_STAGE) and every later stage trains the LLM alone unless it says otherwise, because
    training the encoder with the LLM undoes the reading it learnt; after stage3 come stages of
    documents, of every fact of a page in one conversation (lookups), of scenes with surveys, the
    object stage and colour drills, SFT, lookups again, and prices. Why each stage is there, with
    its measured effect: research/demo-model-log.md (one section per stage)."""
    if not reading:
        return STAGES
    kept = [
        stage._replace(
            steps=READ_STAGE3_STEPS if stage.name == "stage3" else stage.steps,
            settings=[*LLM_ONLY, "--lr", "2e-4" if stage.name == "sft" else "1e-3"],
        )
        for stage in STAGES[1:]
    ]
    return [
        STAGES[0],
        READ_STAGE,
        *kept[:-1],
        DOCUMENT_STAGE,
        LOOKUP_STAGE,
        LOOKUP_SFT_STAGE,
        SCENE_STAGE,
        SCENE_VISION_STAGE,
        SCENE_VISION_AGAIN_STAGE,
        OBJECT_STAGE,
        OBJECT_ALIGN_STAGE,
        DRILL_MIX_STAGE,
        DRILL_STAGE,
        kept[-1],
        LOOKUP_AGAIN_STAGE,
        PRICE_DRILL_STAGE,
        PRICE_KEEP_STAGE,
    ]


def minicpmv(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "minicpmv", *args], check=True)


def records_of(source: Path) -> list[dict]:
    """A split's records with their image paths made absolute (stage data joins several worlds)."""
    records = json.loads(source.read_text())
    for record in records:
        if "image" in record:
            record["image"] = str((source.parent / record["image"]).resolve())
    return records


def stage_data(
    train: Path,
    tasks,
    target: Path,
    reading: Path | None = None,
    pages: Path | None = None,
    scene_records: int | None = None,
    seed: int = 0,
    repeats: dict[str, int] | None = None,
    survey: Path | None = None,
    drill: Path | None = None,
    asking: str | None = None,
) -> Path:
    """The records of `tasks` ("text": every answer as a text-only sample) in a JSON of its own;
    task "read" comes from `reading` (line reading: not part of the world). Every stage from
    stage2 on keeps the lines: without them stage3 and SFT halved the characters read right
    (72.5% -> 38.2% of held-out line places; research/demo-model-log.md). `pages`: a world of documents whose
    records join, and so do those of `survey` (scene surveys) and `drill`; `scene_records`: at
    most that many scene records, drawn with `seed`; `repeats`: {task: n}, that task's records n
    times over (each a task the world must have); `asking`: only records whose first question
    holds it."""
    if tasks == "text":
        chosen = [
            {
                "id": r["id"] + "-text",
                "conversations": [
                    {"role": "user", "content": "Write a sentence from the world."},
                    {"role": "assistant", "content": r["conversations"][1]["content"]},
                ],
            }
            for r in json.loads(train.read_text())
        ]
    else:
        chosen = [
            record
            for source in (train, reading, pages, survey, drill)
            if source
            for record in records_of(source)
            if (tasks is None or record["task"] in tasks)
            and (asking is None or asking in record["conversations"][0]["content"])
        ]
        if scene_records is not None:
            scenes = [number for number, record in enumerate(chosen) if record["task"] in SCENES]
            dropped = set(scenes) - set(random.Random(seed).sample(scenes, min(scene_records, len(scenes))))
            chosen = [record for number, record in enumerate(chosen) if number not in dropped]
        for task, times in (repeats or {}).items():
            repeated = [record for record in chosen if record["task"] == task]
            if not repeated:
                raise SystemExit(f"no {task!r} records in {train}: a world made before the task existed; make it again")
            chosen += repeated * (times - 1)
    target.write_text(json.dumps(chosen))
    return target


def with_prices_kept(data: Path, price_drill: Path, train: Path, survey: Path, seed: int) -> Path:
    """`data` (lookup-again's records) joined by the price drill's records and by PRICE_KEEP_COUNTS
    count questions of the world and PRICE_KEEP_SURVEYS surveys, drawn with `seed`: after the
    price drill, the same mix without them cost count 2.7 points (research/demo-model-log.md, "Prices")."""
    records = json.loads(data.read_text()) + json.loads(price_drill.read_text())
    rng = random.Random(seed)
    for source, task, wanted in ((train, "count", PRICE_KEEP_COUNTS), (survey, "survey", PRICE_KEEP_SURVEYS)):
        rows = [record for record in records_of(source) if record["task"] == task]
        records += rng.sample(rows, min(wanted, len(rows)))
    data.write_text(json.dumps(records))
    return data


def finished(output: Path, steps: int) -> bool:
    latest = output / "latest"
    return latest.exists() and latest.read_text().strip() == f"checkpoint-{steps:06d}"


def write_demo_image(seed: int) -> None:
    """The example images `make demo` asks about, each from a split of its own, so in neither the
    training data nor the test split: a scene ("demo"; scene 1, not 0: the first bundled model
    miscounted scene 0) and a receipt ("demo-receipt", the first). research/demo-model-log.md reports the
    held-out accuracy per task."""
    from minicpmv.bundled import DEMO_IMAGE, DEMO_RECEIPT
    from minicpmv.demo.build import split_rng
    from minicpmv.demo.documents import receipt
    from minicpmv.demo.scenes import random_scene

    for target, image in (
        (DEMO_IMAGE, random_scene(split_rng(seed, "demo", 1)).render()),
        (DEMO_RECEIPT, receipt(split_rng(seed, "demo-receipt", 0)).image),
    ):
        tmp = target.with_name(f".{target.name}.tmp.png")
        image.save(tmp)
        tmp.replace(target)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every stage's steps")
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--validation-images", type=int, default=100)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument(
        "--reading",
        action="store_true",
        help="reading pages: a vision stage on the characters of page slices, page slices to "
        'read in stage2 on, a longer stage3 (research/demo-model-log.md, "Reading in the recipe")',
    )
    parser.add_argument(
        "--read-lines",
        type=int,
        default=6000,
        help='"Read the text." records about page slices for the LLM, in stage2\'s data on',
    )
    parser.add_argument(
        "--pages",
        type=int,
        default=3000,
        help="--reading: document images of a world of their own (WORK/pages) for the documents stage",
    )
    parser.add_argument(
        "--survey-images",
        type=int,
        default=4000,
        help="--reading: scenes of WORK/survey, each surveyed in one conversation, for the scenes stage",
    )
    parser.add_argument(
        "--drill-images",
        type=int,
        default=6000,
        help="--reading: scenes of WORK/drill, each asked its colours by shape, for the drill stages",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--vision-test-images", type=int, default=200, help="held-out images scoring the vision pre-training"
    )
    parser.add_argument(
        "--max-slice-nums", type=int, help="slices per image from stage3 on (1: one 448-px view, the slicing ablation)"
    )
    parser.add_argument("--queries", type=int, help="resampler queries per slice (default 64; the query ablation)")
    parser.add_argument(
        "--reuse",
        metavar="WORK",
        help="link the world and stages 0-2 of another run (they never slice: identical for "
        "a --max-slice-nums ablation)",
    )
    parser.add_argument(
        "--bundle",
        nargs="?",
        const="package",
        metavar="FOLDER",
        help="copy the result, in bfloat16, to FOLDER (default: into the package, as the "
        "bundled demo model, with its example image)",
    )
    return parser.parse_args()


def starting_checkpoint(work: Path, args) -> Path:
    """The world, the untrained checkpoint and the vision pre-training (or their links, --reuse)."""
    world = work / "world"
    if args.reuse:
        if args.queries:
            raise SystemExit("--reuse shares stages 0-2, which --queries changes")
        work.mkdir(parents=True, exist_ok=True)
        for name in (
            "world",
            "initial",
            "initial-localized",
            "vision",
            "vision-regions",
            "vision-read",
            "reading",
            "stage0",
            "read",
            "stage1",
            "stage2",
            "pages",
        ):
            if not (work / name).exists() and (Path(args.reuse) / name).exists():
                (work / name).symlink_to((Path(args.reuse) / name).resolve())
    if not (world / "test.json").exists():
        minicpmv(
            "synth",
            "-o",
            str(world),
            "--seed",
            str(args.seed),
            "--train",
            str(args.train_images),
            "--validation",
            str(args.validation_images),
            "--test",
            str(args.test_images),
            "--document-share",
            "0.4",
        )
    initial = work / "initial"
    if not (initial / "model.safetensors").exists():
        from minicpmv.demo.demo import init_checkpoint

        init_checkpoint(initial, [world / "train.json"], seed=args.seed, query_num=args.queries)
    return vision_stages(initial, work, args)


def reading_data(work: Path, args) -> tuple:
    """--reading's extra records, made once: WORK/reading, survey, pages and drill's train.json
    (without --reading reading, survey and drill are None: the default recipe reads nothing, and
    pages, which only its document stages take, is never made)."""
    reading, survey, pages, drill = (work / folder / "train.json" for folder in ("reading", "survey", "pages", "drill"))
    if not args.reading:
        return None, None, pages, None
    from minicpmv.demo.build import build_reading, colour_drill, survey_scene

    if not reading.exists():
        build_reading(reading.parent, {"train": args.read_lines, "test": args.test_images}, seed=args.seed)
    if not survey.exists():
        build_reading(survey.parent, {"train": args.survey_images}, survey_scene, seed=args.seed, task="survey")
    if not drill.exists():
        build_reading(drill.parent, {"train": args.drill_images}, colour_drill, seed=args.seed, task="drill")
    if not pages.exists():
        minicpmv(
            "synth",
            "-o",
            str(pages.parent),
            "--seed",
            str(args.seed + 1),
            "--train",
            str(args.pages),
            "--validation",
            "0",
            "--test",
            "0",
            "--document-share",
            "1.0",
        )
    return reading, survey, pages, drill


def run_stages(model: Path, work: Path, args) -> Path:
    """Every stage of `stages` in order, each skipped when finished; the last checkpoint."""
    world = work / "world"
    reading, survey, pages, drill = reading_data(work, args)
    for name, recipe, tasks, steps, extra in stages(args.reading):
        output = work / name
        if recipe == "vision":  # the object stage: one view per image, scaled in _pretrain_vision
            model = object_stage(model, output, steps, args)
            continue
        steps = max(1, round(steps * args.scale))
        if args.max_slice_nums and name not in UNSLICED:
            extra = [*extra, "--set", f"max_slice_nums={args.max_slice_nums}"]
        if not finished(output, steps):
            documents = name in (DOCUMENT_STAGE[0], *LOOKUPS)
            data = stage_data(
                world / "train.json",
                tasks,
                work / f"{name}.json",
                reading,
                pages if documents else None,
                DOCUMENT_STAGE_SCENES if documents else None,
                args.seed,
                LOOKUP_REPEATS if name in LOOKUPS else None,
                survey if name in SURVEYED else None,
                drill if name in DRILLED else None,
                PRICE_QUESTION if name == PRICE_DRILL_STAGE[0] else None,
            )
            if name == PRICE_KEEP_STAGE[0]:
                data = with_prices_kept(
                    data, work / f"{PRICE_DRILL_STAGE[0]}.json", world / "train.json", survey, args.seed
                )
            minicpmv(
                "train",
                "--recipe",
                recipe,
                "-m",
                str(model),
                "--data",
                str(data),
                "-o",
                str(output),
                "--max-steps",
                str(steps),
                "--batch-size",
                str(args.batch_size),
                "--seed",
                str(args.seed + SEED_OFFSETS.get(name, 0)),
                "--save-every",
                str(max(25, steps // 6)),
                "--max-length",
                "4096",
                "--resume",
                *extra,
            )
        model = output / (output / "latest").read_text().strip()
    return model


def main() -> None:
    args = parse_args()
    work = Path(args.work)
    model = run_stages(starting_checkpoint(work, args), work, args)
    print(f"demo model: {model}")
    if args.bundle:
        from minicpmv.bundled import DEMO_MODEL
        from minicpmv.demo.demo import bundle_checkpoint

        print(f"bundled as {bundle_checkpoint(model, DEMO_MODEL if args.bundle == 'package' else args.bundle)}")
        if args.bundle == "package":
            write_demo_image(args.seed)


if __name__ == "__main__":
    main()
