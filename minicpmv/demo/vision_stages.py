"""The demo recipe's vision pre-training stages (ours, not the paper's: the demo's encoder is not
pre-trained as SigLIP is): each object's labels from one-object scenes, what each region of a
scene holds, with --reading what each cell of a page's slice holds, and the object stage that
tells every scene token its object. Each is `minicpmv.demo.vision_pretrain` on examples drawn
from the generated world; the recipe (`minicpmv.demo.recipe`) decides when each runs."""

from __future__ import annotations

import json
from pathlib import Path

VISION = ("shape", "column", "row", "colour")  # labels of the vision pre-training, in order (see pretrain_vision)
VISION_STEPS = 600  # per label
REGION_STEPS = 2400  # what each region holds, after VISION
READ_STEPS = 1200  # --reading: what each cell of a page's slice holds (page_slice_or_scene_example)
READ_SHARE = 2 / 3  # of the reading stage's images; the rest are region scenes
OBJECT_PAGE_SHARE = 0.33  # of the object stage's images: page slices, all blocks "none", tokens held


def vision_stages(initial: Path, work: Path, args) -> Path:
    """Vision pre-training: each object's labels from one-object scenes (WORK/vision), then what
    each region of scenes of several objects holds (WORK/vision-regions), then with --reading the
    character in each cell of a page's slices (WORK/vision-read); returns the checkpoint. With
    --reading every vision stage starts from queries pointed at their blocks (localized_start):
    pointed just before the reading stage, they lost the region stage's training (the region
    head's share of filled regions fell from 93.5% to 58.4%; research/demo-model-log.md)."""
    from minicpmv.demo.documents import CELL_CHARACTERS
    from minicpmv.demo.scenes import LABELS, REGION_LABELS, one_object_example, region_scene_example

    start = localized_start(initial, work / "initial-localized") if args.reading else initial
    model = _pretrain_vision(start, work / "vision", VISION, VISION_STEPS, LABELS, one_object_example, args)
    model = _pretrain_vision(
        model, work / "vision-regions", ("regions",), REGION_STEPS, REGION_LABELS, region_scene_example, args
    )
    if args.reading:
        model = _pretrain_vision(
            model,
            work / "vision-read",
            ("cells",),
            READ_STEPS,
            {"cells": CELL_CHARACTERS, **REGION_LABELS},
            page_slice_or_scene_example,
            args,
            resolutions=(448,),
            kept=("regions",),  # a page's slices are 448 px
            none_weight={"cells": 0.05},
            per_token=("cells",),
        )  # see TokenGridHead
    return model


def localized_start(model: Path, folder: Path) -> Path:
    """`model` with each resampler query pointed at its own 2x2-patch block of a 448-px slice
    (minicpmv.model.initialization.localize_queries), in FOLDER. From the region stage's
    resampler as it was, the reading head named 54% of a page's inked cells after 3000 steps;
    with the queries pointed first, 80% after 400 (measured, research/demo-model-log.md)."""
    from minicpmv.demo.demo import save_model_folder
    from minicpmv.model.checkpoint import load_model
    from minicpmv.model.initialization import localize_queries

    if not (folder / "model.safetensors").exists():  # whole or absent: a stopped run makes it again
        loaded = load_model(model).float()
        localize_queries(loaded.resampler, 448 // loaded.config.vision.patch_size)
        save_model_folder(loaded, model, folder)
    return folder


def page_slice_or_scene_example(rng):
    """Reading, with what each region holds kept in the loss: READ_SHARE of the images are slices
    of pages (no shapes: every region "none"), the rest region scenes (no text: every cell
    "none"). Without the scenes, line-reading stages cost the finished model 16 points of
    held-out scene questions (86.0% -> 70.5%, shape 100% -> 64%; research/demo-model-log.md)."""
    from minicpmv.demo.documents import CELL, SLICE, page_slice_example
    from minicpmv.demo.scenes import COLUMNS, ROWS, region_scene_example

    if rng.random() < READ_SHARE:
        image, labels, _ = page_slice_example(rng)
        return image, {**labels, "regions": ("none",) * (len(ROWS) * len(COLUMNS))}
    image, labels = region_scene_example(rng)
    return image, {**labels, "cells": ("none",) * (SLICE // CELL) ** 2}  # 16 x 16 cells of a 448-px slice


def object_or_page_example(rng):
    """What each block of a scene holds, its tokens free to change ({KEPT: False}), or, for
    OBJECT_PAGE_SHARE of the images, a page's slice with every block "none" and its tokens held
    (kept_tokens): the LLM, frozen since the reading stage, reads those tokens."""
    from minicpmv.demo.documents import page_slice_example
    from minicpmv.demo.scenes import OBJECT_GRID, object_grid_example
    from minicpmv.demo.vision_pretrain import KEPT

    if rng.random() < OBJECT_PAGE_SHARE:
        image, _, _ = page_slice_example(rng)
        return image, {"objects": ("none",) * OBJECT_GRID**2}
    image, labels = object_grid_example(rng)
    return image, {**labels, KEPT: False}


def object_stage(model: Path, output: Path, steps: int, args) -> Path:
    """The recipe's object stage: every token of a scene told, through a TokenGridHead, the colour and shape of
    the object covering its block (a linear probe found 70.7% of them on the scene-trained
    encoder; after 600 steps 97.1%), the tokens of page slices held to what they were."""
    from minicpmv.demo.scenes import OBJECT_LABELS

    queries = json.loads((model / "config.json").read_text())["query_num"]
    return _pretrain_vision(
        model,
        output,
        ("objects",),
        steps,
        OBJECT_LABELS,
        object_or_page_example,
        args,
        resolutions=(448,),
        per_token=("objects",),
        none_weight={"objects": 0.2},
        kept_tokens=queries,
    )


def _pretrain_vision(start: Path, output: Path, labels, steps: int, classes, example, args, **options) -> Path:
    from minicpmv.demo.build import split_rng
    from minicpmv.demo.vision_pretrain import VisionPretraining, run_vision_pretraining

    settings = VisionPretraining(
        labels,
        steps_per_label=max(1, round(steps * args.scale)),
        batch_size=args.batch_size,
        test_images=args.vision_test_images,
        seed=args.seed,
        **options,
    )

    def examples(split: str, index: int):
        return example(split_rng(args.seed, f"{output.name}-{split}", index))

    return run_vision_pretraining(start, output, examples, classes, settings)
