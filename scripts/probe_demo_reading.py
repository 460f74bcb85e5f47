"""Can the demo model's vision encoder learn to read? (research/demo-model-log.md, "Reading: a probe")

    python scripts/probe_demo_reading.py MODEL -o OUTPUT [--steps 1000] [--placement fixed|grid|phase|anywhere]
    python scripts/probe_demo_reading.py MODEL -o OUTPUT --frozen-cells [--steps 300]

Vision pre-training (minicpmv/training/vision_pretrain.py) with one label: the characters of a
receipt line ("pasta 2.72", text 22 px high as on the world's documents) on a 448-px slice, one
class per character place, read by a region head (a learned query per place over the resampler's
outputs). `--placement` says where the line is on the slice (text_line_example): always at the
left middle, moved by whole patches, moved by less than a patch, or anywhere as on a real page. Prints the held-out share of places named right and the share
that naming each place's most common character gets; OUTPUT holds the run (checkpoint,
metrics.jsonl, loss.png, accuracy.json). The LLM is not involved.

`--frozen-cells` asks what a trained checkpoint still holds instead: the encoder and resampler
stay frozen and only a fresh per-token head learns the character in each 28-px cell of a page's
448-px slices (page_slice_example; blank cells weigh 0.05, as in the recipe's reading stage).
"cells@448-marked" is the share of inked cells named right (research/demo-model-log.md, "Queries
pointed from the start").
"""

from __future__ import annotations

import argparse
from collections import Counter

from minicpmv.demo.build import split_rng
from minicpmv.demo.documents import (
    CELL_CHARACTERS,
    LINE_CHARACTERS,
    LINE_PLACEMENTS,
    LINE_PLACES,
    page_slice_example,
    text_line_example,
)
from minicpmv.demo.vision_pretrain import VisionPretraining, run_vision_pretraining

SEED = 0  # with split "read-train" / "read-test": the probe images' own stream


def majority_share(examples, count: int) -> float:
    """Share of places named right by always answering each place's most common character."""
    places = [Counter() for _ in range(LINE_PLACES)]
    for index in range(count):
        for place, character in zip(places, examples("test", index)[1]["characters"]):
            place[character] += 1
    return sum(place.most_common(1)[0][1] for place in places) / (count * LINE_PLACES)


def probe_cells(model: str, output: str, steps: int, test: int) -> None:
    def examples(split: str, index: int):
        image, labels, _ = page_slice_example(split_rng(SEED, f"probe-{split}", index))
        return image, labels

    settings = VisionPretraining(
        ("cells",),
        steps_per_label=steps,
        resolutions=(448,),
        test_images=test,
        none_weight={"cells": 0.05},
        per_token=("cells",),
        probe=True,
    )
    run_vision_pretraining(model, output, examples, {"cells": CELL_CHARACTERS}, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--test", type=int, default=100, help="held-out images")
    parser.add_argument("--placement", choices=LINE_PLACEMENTS, default="fixed", help="where the line is on the slice")
    parser.add_argument(
        "--frozen-cells",
        action="store_true",
        help="probe a trained checkpoint: only a head learns each cell of page slices",
    )
    args = parser.parse_args()
    if args.frozen_cells:
        probe_cells(args.model, args.output, args.steps, args.test)
        return

    def examples(split: str, index: int):
        return text_line_example(split_rng(SEED, f"read-{split}", index), placement=args.placement)

    settings = VisionPretraining(("characters",), steps_per_label=args.steps, resolutions=(448,), test_images=args.test)
    run_vision_pretraining(args.model, args.output, examples, {"characters": LINE_CHARACTERS}, settings)
    print(f"naming each place's most common character: {majority_share(examples, args.test):.1%}")


if __name__ == "__main__":
    main()
