"""A small generated fine-tuning set in the official JSON format: coloured-shape images with
questions and answers (single image, multi-image, text-only), plus a few broken records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import TINY
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 80, 220)}


def make_dataset(folder: Path, count: int = 12, broken: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    names = list(COLOURS)
    for i in range(count):
        colour = names[i % len(names)]
        image = Image.new("RGB", (160 + 40 * (i % 3), 120), (250, 250, 250))
        ImageDraw.Draw(image).ellipse((30, 20, 110, 100), fill=COLOURS[colour])
        image.save(folder / f"shape{i}.png")
        if i % 4 == 3:  # text-only
            records.append(
                {
                    "id": f"t{i}",
                    "conversations": [
                        {"role": "user", "content": f"Say the word {colour}."},
                        {"role": "assistant", "content": colour},
                    ],
                }
            )
        elif i % 4 == 2:  # multi-image with tags
            records.append(
                {
                    "id": f"m{i}",
                    "image": {"<image_00>": f"shape{i}.png", "<image_01>": f"shape{i - 1}.png"},
                    "conversations": [
                        {"role": "user", "content": "<image_00> and <image_01>: first colour?"},
                        {"role": "assistant", "content": colour},
                    ],
                }
            )
        else:
            records.append(
                {
                    "id": f"s{i}",
                    "image": f"shape{i}.png",
                    "conversations": [
                        {"role": "user", "content": "<image>\nWhat colour is the circle?"},
                        {"role": "assistant", "content": colour},
                        {"role": "user", "content": "Sure?"},
                        {"role": "assistant", "content": f"Yes, {colour}."},
                    ],
                }
            )
    if broken:
        records += [
            {
                "id": "missing",
                "image": "nope.png",
                "conversations": [{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "x"}],
            },
            {"id": "no-answer", "conversations": [{"role": "user", "content": "hello"}]},
            {
                "id": "too-long",
                "conversations": [{"role": "user", "content": "word " * 3000}, {"role": "assistant", "content": "ok"}],
            },
        ]
    path = folder / "train.json"
    path.write_text(json.dumps(records, indent=1))
    return path


MINICPMV = [sys.executable, "-m", "minicpmv"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "minicpmv"]


def tiny_train_args(data: Path, steps: int = 6, recipe: str = "sft", checkpoint: Path = TINY["2.6"] / "checkpoint"):
    """`minicpmv train` arguments for a short float32 run on a tiny checkpoint (lr 1e-3)."""
    return ["train", "--recipe", recipe, "-m", str(checkpoint), "--data", str(data), "--max-steps", str(steps),
            "--lr", "1e-3", "--max-length", "1024", "--set", "precision=float32"]  # fmt: skip


def resumable_train_args(data: Path) -> list[str]:
    """Six steps saved every two: what the kill-and-resume tests run."""
    return tiny_train_args(data) + ["--save-every", "2", "--batch-size", "2", "--set", "warmup_ratio=0.3"]
