"""A small generated fine-tuning set in the official JSON format: coloured-shape images with
questions and answers (single image, multi-image, text-only), plus a few broken records."""

from __future__ import annotations

import json
from pathlib import Path

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
