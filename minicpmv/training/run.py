"""One training run end to end: recipe -> processor, data, model (resumed if asked), trainer,
memory estimate, loss curve. What `minicpmv train` calls, usable from Python as well."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import ConfigError
from ..files import recover, staged_path
from ..jsonfile import read_jsonl
from ..model.checkpoint import load_model
from ..processing.processor import MiniCPMVProcessor
from ..quant.linear import NativeLinear
from .checkpoints import latest_checkpoint, load_state
from .data import ChatDataset, SampleBuilder
from .dpo import PreferenceDataset, make_dpo_trainer
from .memory import describe, estimate_memory
from .recipes import Recipe
from .trainer import Trainer, World, seed_everything


def processor_for(recipe: Recipe, model_path: str | Path) -> MiniCPMVProcessor:
    """The checkpoint's processor with the recipe's resolution and slicing."""
    processor = MiniCPMVProcessor.from_pretrained(model_path)
    changes = {
        name: value for name in ("scale_resolution", "max_slice_nums") if (value := getattr(recipe, name)) is not None
    }
    processor.config = dataclasses.replace(processor.config, **changes)
    return processor


def run_training(
    recipe: Recipe,
    model_path: str | Path,
    data: str | Path,
    output: str | Path,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: is a file, expected a folder")
    if not resume and not overwrite and latest_checkpoint(output) is not None:
        raise ConfigError(
            f"{output} already holds a training run; use --resume to continue it, "
            "--overwrite to start afresh, or another --output"
        )
    world = World.from_env()
    if world.rank == 0:
        recover(output)  # staging folders and files a killed save left behind
        if overwrite and not resume:  # the old run is given up: a kill before our first save must not resume it
            (output / "latest").unlink(missing_ok=True)
    seed_everything(recipe.seed)
    resumed = latest_checkpoint(output) if resume else None
    if resumed is None and world.rank == 0:  # a fresh start: lines of an earlier attempt are not this run's
        (output / "metrics.jsonl").unlink(missing_ok=True)
    builder = SampleBuilder(processor_for(recipe, model_path), recipe.max_length, recipe.max_slice_nums)
    dataset = PreferenceDataset(data, builder) if recipe.objective == "dpo" else ChatDataset(data, builder)
    model = load_model(resumed or model_path)
    if any(isinstance(module, NativeLinear) for module in model.modules()):
        # quantized layers hold buffers, not parameters, and their int8 kernels pass no gradient
        # back to their inputs: a run would leave them as they are and starve what lies before them
        raise ConfigError(
            f"{resumed or model_path}: a quantized checkpoint cannot be trained; "
            "train the float checkpoint and quantize the result"
        )
    if recipe.lora:
        from .lora import add_lora, load_adapter

        add_lora(model, recipe)
        if resumed is not None:
            load_adapter(model, resumed)
    if recipe.objective == "dpo":  # the reference pass runs here, on the start model (LoRA adapters start at 0)
        trainer = make_dpo_trainer(model, dataset, recipe, output, model_path, world, progress)
    else:
        trainer = Trainer(model, dataset, recipe, output, model_path, world, progress)
    if resumed is not None:
        trainer.load_state(load_state(resumed))
    if world.rank == 0:
        print(describe(estimate_memory(model, recipe, autocast=trainer.autocast is not None)), flush=True)
        print("trainable parameters: " + ", ".join(f"{k} {v:,}" for k, v in trainer.counts.items()), flush=True)
    history = trainer.train()
    if world.rank == 0:
        draw_loss_curve(output / "metrics.jsonl", output / "loss.png")
    return {
        "rank": world.rank,
        "history": history,
        "checkpoint": str(latest_checkpoint(output)),
        "skipped": dict(dataset.skipped),
        "trainable": trainer.counts,
    }


def draw_loss_curve(metrics: Path, target: Path) -> bool:
    """Loss per step to a PNG (needs matplotlib); False when there is nothing or no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [row for row in read_jsonl(metrics) if "loss" in row]
    if not rows:
        return False
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    with staged_path(target, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
    return True
