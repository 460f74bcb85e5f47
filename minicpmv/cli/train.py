"""`minicpmv train`: the paper's pre-training stages, SFT and LoRA on the official JSON format, and DPO
on preference pairs."""

from __future__ import annotations

import sys

from ..errors import ConfigError
from ..hub import resolve_model
from .options import wire


def train(
    recipe: str,
    model: str,
    data: str,
    output: str,
    config: str | None = None,
    max_steps: int | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    grad_accum: int | None = None,
    max_length: int | None = None,
    save_every: int | None = None,
    seed: int | None = None,
    packing: bool = False,
    set: list[str] | None = None,  # --set KEY=VALUE, named as its flag
    resume: bool = False,
    overwrite: bool = False,
) -> dict:
    """Train a checkpoint with a recipe (stage1, stage2, stage3, sft, lora) on a fine-tuning JSON,
    or (dpo, dpo-lora) on preference pairs (JSON or JSONL of image, question, chosen, rejected).

    One process, or `torchrun --nproc-per-node N -m minicpmv train ...` (DDP; `--set
    distributed=fsdp` to shard). Prints a memory estimate, shows progress with loss and
    tokens/s, appends metrics to OUTPUT/metrics.jsonl, draws OUTPUT/loss.png, and saves
    checkpoints (official layout + trainer state) to OUTPUT/checkpoint-STEP, with OUTPUT/latest
    naming the newest; `--resume` continues exactly from it.
    """
    try:
        from ..training.recipes import parse_assignments
        from ..training.recipes import recipe as make_recipe
        from ..training.run import run_training
    except ImportError as exc:
        raise ConfigError(f"training needs the train extra: pip install 'minicpmv[train]' ({exc})") from None
    overrides = parse_assignments(set or [])
    given = {
        "max_steps": max_steps,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "save_every": save_every,
        "seed": seed,
        "max_length": max_length,
    }
    overrides.update({name: value for name, value in given.items() if value is not None})
    if packing:
        overrides["packing"] = True
    chosen = make_recipe(recipe, overrides, config)
    result = run_training(chosen, str(resolve_model(model)), data, output, resume=resume, overwrite=overwrite)
    if result["rank"] == 0:
        last = result["history"][-1] if result["history"] else None
        summary = f"loss {last['loss']:.4f} at step {last['step']}" if last else "nothing left to train"
        print(f"minicpmv train: {chosen.name}: {summary}; saved {result['checkpoint']}", file=sys.stderr)
    return result


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="pre-training stages, SFT or LoRA on a fine-tuning JSON",
        description=train.__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--recipe", required=True, choices=["stage1", "stage2", "stage3", "sft", "lora", "dpo", "dpo-lora"]
    )
    parser.add_argument("--model", "-m", required=True, help="checkpoint folder to start from")
    parser.add_argument(
        "--data", required=True, help="training JSON in the official fine-tuning format (dpo: preference pairs)"
    )
    parser.add_argument("--output", "-o", required=True, help="folder for checkpoints and metrics")
    parser.add_argument("--config", help="YAML file of recipe settings")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--learning-rate", "--lr", type=float)
    parser.add_argument("--batch-size", type=int, help="samples per process per micro-batch")
    parser.add_argument("--grad-accum", type=int)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--save-every", type=int, help="steps between checkpoints")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--packing", action="store_true", help="pack samples into rows of --max-length tokens")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="any recipe setting (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/latest")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUTPUT that holds a run (its checkpoints may be replaced)",
    )
    wire(parser, train)
