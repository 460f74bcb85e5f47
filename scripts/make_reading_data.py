"""Line-reading data for the LLM: "Read the text." about a 448-px slice holding one receipt line
(docs/demo-model.md, "Reading: a probe"), in the official fine-tuning JSON format.

    python scripts/make_reading_data.py -o OUTPUT [--train 12000] [--test 200] [--placement anywhere]

Writes OUTPUT/train.json and OUTPUT/test.json (task "read", images under OUTPUT/images), ready
for `minicpmv train --data OUTPUT/train.json` and `scripts/eval_demo_model.py --split OUTPUT/test.json`.
Each split draws from its own seeded stream ("lines-train", "lines-test"), so they share no image.
"""

from __future__ import annotations

import argparse

from minicpmv.synth.build import build_reading_lines
from minicpmv.synth.documents import LINE_PLACEMENTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--placement", choices=LINE_PLACEMENTS, default="anywhere")
    args = parser.parse_args()
    for path in build_reading_lines(args.output, {"train": args.train, "test": args.test}, args.placement).values():
        print(path)


if __name__ == "__main__":
    main()
