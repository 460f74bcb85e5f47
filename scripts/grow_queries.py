"""Give a checkpoint's resampler more queries without changing what the old ones give.

    python scripts/grow_queries.py CHECKPOINT OUTPUT [--extra 32] [--seed 0]

The new queries are appended after the old ones (random rows of the query matrix), so each
slice's first Q tokens are exactly what they were and the new ones follow them: 64 -> 96 is
MiniCPM-Llama3-V 2.5's count. config.json's query_num and preprocessor_config.json's
image_feature_size say the new count. Why: the reading demo model's 64 queries are pointed at
their blocks of a slice, which reads text and binds a scene's colours to its shapes poorly; the
new, free queries can learn whole objects (train them alone with
`VisionPretraining(free_queries=...)`) while the pointed ones keep reading (research/demo-model-log.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from minicpmv.demo.demo import save_model_folder
from minicpmv.model.checkpoint import load_model
from minicpmv.model.config import MiniCPMVConfig
from minicpmv.model.minicpmv import MiniCPMV

QUERY = "resampler.query"


def grown_model(model: MiniCPMV, extra: int, seed: int) -> MiniCPMV:
    """A new model with `extra` random queries after the old ones; every other weight is the same."""
    weights = model.state_dict()
    old = weights[QUERY]
    new_rows = torch.randn((extra, old.shape[1]), generator=torch.Generator().manual_seed(seed)) * old.std()
    weights[QUERY] = torch.cat([old, new_rows.to(old.dtype)])  # (Q + extra, D)
    grown = MiniCPMV(MiniCPMVConfig.from_dict({**model.config.raw, "query_num": old.shape[0] + extra}))
    grown.load_state_dict(weights)
    return grown.eval()


def largest_feature_difference(old: MiniCPMV, new: MiniCPMV) -> float:
    """Largest difference between the old queries' outputs of both models on a random crop."""
    patch = old.config.vision.patch_size
    crop = torch.randn((3, patch, patch * 16), generator=torch.Generator().manual_seed(0))  # one row of 16 patches
    sizes = torch.tensor([[4, 4]])
    with torch.no_grad():
        before, after = old.get_image_features([crop], sizes), new.get_image_features([crop], sizes)
    return (before - after[:, : before.shape[1]]).abs().max().item()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--extra", type=int, default=32, help="queries to add (64 + 32 = 2.5's 96)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new queries' random start")
    args = parser.parse_args()
    problem = (
        f"--extra must be 1 or more, not {args.extra}"
        if args.extra < 1
        else f"{args.output} exists; grow_queries writes a new folder"
        if args.output.exists()
        else None
    )
    if problem:
        parser.error(problem)
    return args


def main() -> None:
    args = arguments()
    model = load_model(args.checkpoint).eval()
    grown = grown_model(model, args.extra, args.seed)
    difference = largest_feature_difference(model, grown)
    if difference > 1e-5:
        raise SystemExit(f"grow_queries: the old queries' outputs differ by {difference:.2e}; not saved")
    save_model_folder(
        grown, args.checkpoint, args.output, {"image_feature_size": grown.config.query_num}
    )  # whole or not at all
    print(
        f"grow_queries: {grown.config.query_num} queries per slice, the first {model.config.query_num} "
        f"unchanged (largest difference {difference:.1e}): {args.output}"
    )


if __name__ == "__main__":
    main()
