"""Line-reading data for the LLM: "Read the text." about a 448-px slice holding one receipt line
(docs/demo-model.md, "Reading: a probe"), in the official fine-tuning JSON format.

    python scripts/make_reading_data.py -o OUTPUT [--train 12000] [--test 200] [--placement anywhere]

Writes OUTPUT/train.json and OUTPUT/test.json (task "read", images under OUTPUT/images), ready
for `minicpmv train --data OUTPUT/train.json` and `scripts/eval_demo_model.py --split OUTPUT/test.json`.
Each split draws from its own seeded stream ("lines-train", "lines-test"), so they share no image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minicpmv.synth.build import conversation_record, split_rng, write_json
from minicpmv.synth.documents import LINE_PLACEMENTS, text_line_example

SEED = 0


def write_split(output: Path, split: str, count: int, placement: str) -> Path:
    records = []
    for index in range(count):
        image, labels = text_line_example(split_rng(SEED, f"lines-{split}", index), placement=placement)
        name = f"images/{split}-{index:05d}.png"
        image.save(output / name)
        answer = "".join(c for c in labels["characters"] if c != "none")
        records.append(conversation_record(name, name, "read", [("Read the text.", answer)]))
    return write_json(output / f"{split}.json", records)  # atomic: a stopped run leaves no half file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--placement", choices=LINE_PLACEMENTS, default="anywhere")
    args = parser.parse_args()
    output = Path(args.output)
    (output / "images").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", args.train), ("test", args.test)):
        print(write_split(output, split, count, args.placement))


if __name__ == "__main__":
    main()
