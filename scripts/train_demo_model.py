"""Build the demo model from nothing, through the toolkit's own commands (issue: bundled demo model).

    python scripts/train_demo_model.py [--work runs/demo] [--seed 0] [--scale 1.0]

1. `minicpmv synth`: the generated world (train / validation / test splits);
2. the untrained checkpoint: tokenizer trained on the world's text, seeded random weights;
3. stage0 (ours, not the paper's): the LLM alone learns the world's language from text-only
   samples, standing in for the pre-trained LLM the paper starts from;
4. the paper's stage1 (resampler, 224 px, captions) -> stage2 (vision encoder, 448 px, captions)
   -> stage3 (both, adaptive slicing, captions and transcriptions) -> sft (everything, all tasks).

Each stage is `minicpmv train ... --resume`, so running the script again after an interruption
continues where it stopped; a finished stage is skipped. Every stage keeps its loss curve
(`WORK/STAGE/loss.png`). `--scale` multiplies every stage's step count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STAGES = [  # name, recipe, tasks in its data (None: all), steps, extra settings
    ("stage0", "sft", "text", 300, ["--set", "train=[llm]", "--lr", "2e-3"]),
    ("stage1", "stage1", ("caption",), 150, ["--lr", "2e-3"]),
    ("stage2", "stage2", ("caption",), 150, ["--lr", "5e-4"]),
    ("stage3", "stage3", ("caption", "ocr"), 300, ["--lr", "5e-4"]),
    ("sft", "sft", None, 600, ["--lr", "5e-4"]),
]


def minicpmv(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "minicpmv", *args], check=True)


def stage_data(train: Path, tasks, target: Path) -> Path:
    """The records of `tasks` ("text": every answer as a text-only sample) in a JSON of its own."""
    records = json.loads(train.read_text())
    if tasks == "text":
        chosen = [{"id": r["id"] + "-text", "conversations": [
            {"role": "user", "content": "Write a sentence from the world."},
            {"role": "assistant", "content": r["conversations"][1]["content"]}]} for r in records]
    else:
        chosen = [r for r in records if tasks is None or r["task"] in tasks]
        for record in chosen:
            record["image"] = str((train.parent / record["image"]).resolve())
    target.write_text(json.dumps(chosen))
    return target


def finished(output: Path, steps: int) -> bool:
    latest = output / "latest"
    return latest.exists() and latest.read_text().strip() == f"checkpoint-{steps:06d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every stage's steps")
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    work = Path(args.work)
    world = work / "world"
    if not (world / "test.json").exists():
        minicpmv("synth", "-o", str(world), "--seed", str(args.seed), "--train", str(args.train_images))
    initial = work / "initial"
    if not (initial / "model.safetensors").exists():
        from minicpmv.synth.demo import init_checkpoint

        init_checkpoint(initial, [world / "train.json"], seed=args.seed)
    model = initial
    for name, recipe, tasks, steps, extra in STAGES:
        steps = max(1, round(steps * args.scale))
        output = work / name
        if not finished(output, steps):
            data = stage_data(world / "train.json", tasks, work / f"{name}.json")
            minicpmv("train", "--recipe", recipe, "-m", str(model), "--data", str(data), "-o", str(output),
                     "--max-steps", str(steps), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
                     "--save-every", "50", "--max-length", "4096", "--resume", *extra)
        model = output / (output / "latest").read_text().strip()
    print(f"demo model: {model}")


if __name__ == "__main__":
    main()
