"""Deepen a checkpoint's LLM without changing what it computes (depth up-scaling).

    python scripts/grow_llm.py CHECKPOINT OUTPUT [--every 1]

After every `--every` layers of the LLM a new layer is inserted: a copy of the layer before it
whose two output projections (attention's o_proj, the MLP's down_proj) are zero, so the new
layer adds nothing to the residual stream and the grown model gives the same logits as the old
one (checked on a random batch before saving). Training then starts from what the model knows,
with more layers to learn what it could not: the demo model's lookup of a receipt line by its
word (research/demo-model-log.md, "Lookup"). The vision encoder and resampler are copied unchanged.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from minicpmv.demo.demo import save_model_folder
from minicpmv.model.checkpoint import load_model
from minicpmv.model.config import MiniCPMVConfig
from minicpmv.model.minicpmv import MiniCPMV

LAYER = re.compile(r"^llm\.model\.layers\.(\d+)\.(.+)$")
SILENT = ("self_attn.o_proj.weight", "mlp.down_proj.weight")  # zeroed in a new layer: its output is nothing


def grown_weights(weights: dict[str, torch.Tensor], layers: int, every: int) -> tuple[dict[str, torch.Tensor], int]:
    """The weights with a silent copy inserted after every `every` of the `layers` LLM layers,
    and the new layer count."""
    new_index, position = {}, 0
    for old in range(layers):
        new_index[old] = position
        position += 2 if (old + 1) % every == 0 else 1
    grown = {}
    for name, tensor in weights.items():
        match = LAYER.match(name)
        if not match:
            grown[name] = tensor
            continue
        old, rest = int(match.group(1)), match.group(2)
        grown[f"llm.model.layers.{new_index[old]}.{rest}"] = tensor
        if (old + 1) % every == 0:
            copy = torch.zeros_like(tensor) if rest in SILENT else tensor.clone()
            grown[f"llm.model.layers.{new_index[old] + 1}.{rest}"] = copy
    return grown, position


def grown_model(model: MiniCPMV, every: int) -> MiniCPMV:
    """A new model whose LLM has the silent layers (`grown_weights`); the rest is the same."""
    weights, layers = grown_weights(model.state_dict(), model.config.llm.num_layers, every)
    grown = MiniCPMV(MiniCPMVConfig.from_dict({**model.config.raw, "num_hidden_layers": layers}))
    grown.load_state_dict(weights)
    return grown.eval()


def largest_logit_difference(old: MiniCPMV, new: MiniCPMV) -> float:
    """Largest logit difference between two models' LLMs on a random text batch."""
    tokens = torch.randint(0, old.config.llm.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (old.llm(old.llm.embed(tokens)) - new.llm(new.llm.embed(tokens))).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument(
        "--every", type=int, default=1, help="insert a layer after every N layers (1: double the depth)"
    )
    args = parser.parse_args()
    if args.every < 1:
        parser.error(f"--every must be 1 or more, not {args.every}")
    if args.output.exists():
        parser.error(f"{args.output} exists; grow_llm writes a new folder")
    model = load_model(args.checkpoint).eval()
    grown = grown_model(model, args.every)
    difference = largest_logit_difference(model, grown)
    if difference > 1e-4:
        raise SystemExit(f"grow_llm: the grown model's logits differ by {difference:.2e}; not saved")
    save_model_folder(grown, args.checkpoint, args.output)  # whole or not at all
    print(
        f"grow_llm: {grown.config.llm.num_layers} LLM layers, same logits "
        f"(largest difference {difference:.1e}): {args.output}"
    )


if __name__ == "__main__":
    main()
