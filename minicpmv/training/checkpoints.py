"""Training checkpoints: an official-layout model folder plus `trainer_state.pt` (optimizer,
scheduler, RNG and data position), written to a temporary folder and renamed into place, and
a `latest` file (also replaced atomically) naming the newest complete one. A run killed at any
moment leaves `latest` pointing at a whole checkpoint."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..model.checkpoint import save_model

LATEST = "latest"
STATE = "trainer_state.pt"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def copy_model_files(source: Path, target: Path) -> None:
    """Tokenizer, processor and other non-weight files of the source checkpoint, so the saved
    folder loads like an official one."""
    for path in Path(source).iterdir():
        if path.is_file() and path.name != "config.json" and not path.name.endswith(WEIGHT_SUFFIXES) \
                and not path.name.endswith(".index.json"):
            shutil.copy2(path, target / path.name)


def save_checkpoint(output: Path, step: int, model, source: Path, state: dict, weights: dict | None = None,
                    extra_files=None) -> Path:
    """Write `output/checkpoint-STEP` whole (temporary folder, then rename) and point `latest` at it."""
    output.mkdir(parents=True, exist_ok=True)
    final = output / f"checkpoint-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=output))
    try:
        save_model(model, tmp, state=weights)
        copy_model_files(source, tmp)
        if extra_files is not None:  # e.g. a LoRA adapter beside the weights
            extra_files(tmp)
        torch.save(state, tmp / STATE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_atomic(output / LATEST, final.name + "\n")
    return final


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def latest_checkpoint(output: Path) -> Path | None:
    pointer = Path(output) / LATEST
    if not pointer.exists():
        return None
    folder = Path(output) / pointer.read_text().strip()
    if not (folder / STATE).exists():
        raise CheckpointError(f"{pointer} names {folder.name}, which has no {STATE}")
    return folder


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
