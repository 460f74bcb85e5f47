"""Reading data for the LLM: "Read the text." about one 448-px slice of a page, as the processor
cuts it, or, with --placement, about a slice holding one receipt line (research/demo-model-log.md,
"Reading: a probe"), or, with --find, a document question (a price, the total, a field) about a
slice holding that line whole (task "find"), in the official fine-tuning JSON format.

    python scripts/make_reading_data.py -o OUTPUT [--train 12000] [--test 200] [--placement anywhere | --find]

Writes OUTPUT/train.json and OUTPUT/test.json (task "read", images under OUTPUT/images), ready
for `minicpmv train --data OUTPUT/train.json` and `scripts/eval_demo_model.py --split OUTPUT/test.json`.
Each split draws from its own seeded stream ("lines-train", "lines-test"), so they share no image.
"""

from __future__ import annotations

import argparse
from functools import partial

from minicpmv.demo.build import build_reading, read_line, read_page_slice
from minicpmv.demo.documents import LINE_PLACEMENTS, slice_question_example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--test", type=int, default=200)
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--placement", choices=LINE_PLACEMENTS, help="one line placed so, instead of a page's slice")
    chosen.add_argument(
        "--find", action="store_true", help="a question about a line of the slice, instead of reading it"
    )
    args = parser.parse_args()
    if args.find:
        reader = slice_question_example
    else:
        reader = partial(read_line, placement=args.placement) if args.placement else read_page_slice
    sizes = {"train": args.train, "test": args.test}
    for path in build_reading(args.output, sizes, reader, task="find" if args.find else "read").values():
        print(path)


if __name__ == "__main__":
    main()
