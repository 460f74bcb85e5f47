"""Quality of a quantized checkpoint against its original, on the fixed questions of
`minicpmv quantize --check` (two about the bundled image, one text-only), without re-quantizing:
top-1 agreement and mean KL of next-token distributions, greedy text equality.

    python benchmarks/quality.py ORIGINAL_FOLDER QUANTIZED_FOLDER [--tokens 16]

`minicpmv bench --random-init qwen2-1.5b` leaves both folders under
$MINICPMV_CACHE_DIR/random-init/qwen2-1.5b/ (fp32, int8, int4-g64).
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("original")
    parser.add_argument("quantized")
    parser.add_argument("--tokens", type=int, default=16, help="answer length scored")
    args = parser.parse_args()
    from minicpmv import load
    from minicpmv.quant.quality import compare

    # float32 vision in both: the report is about the LLM's weights, not the vision precision
    report = compare(
        load(args.original, vision_dtype="float32", low_memory=True),
        load(args.quantized, vision_dtype="float32", low_memory=True),
        new_tokens=args.tokens,
    )
    for row in report["samples"]:
        print(
            f"{row['question'][:40]:<40} top-1 {row['top1_agreement']:.3f}  KL {row['mean_kl']:.4f}  "
            f"same text {'yes' if row['greedy_text_equal'] else 'no'}"
        )
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}))


if __name__ == "__main__":
    main()
