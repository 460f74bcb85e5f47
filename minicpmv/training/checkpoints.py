"""Training checkpoints: an official-layout model folder plus `trainer_state.pt` (optimizer,
scheduler, RNG and data position), staged, fsynced and renamed into place (files.staged_folder),
and a `latest` file (also replaced atomically) naming the newest complete one. A run killed at any
moment leaves `latest` naming a whole checkpoint: when a step is saved again (a resumed finished
run, an overwritten one) the old folder is moved aside until the new one is in, and
`latest_checkpoint` puts it back if a kill came in between."""

from __future__ import annotations

import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import restore_aside, staged_folder, write_text_atomic
from ..model.checkpoint import save_model

LATEST = "latest"
STATE = "trainer_state.pt"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def copy_model_files(source: Path, target: Path) -> None:
    """Tokenizer, processor and other non-weight files of the source checkpoint, so the saved
    folder loads like an official one."""
    for path in Path(source).iterdir():
        if (
            path.is_file()
            and path.name != "config.json"
            and not path.name.endswith(WEIGHT_SUFFIXES)
            and not path.name.endswith(".index.json")
        ):
            shutil.copy2(path, target / path.name)


def save_checkpoint(
    output: Path, step: int, model, source: Path, state: dict, weights: dict | None = None, extra_files=None
) -> Path:
    """Write `output/checkpoint-STEP` whole (staged, then renamed) and point `latest` at it."""
    final = Path(output) / f"checkpoint-{step:06d}"
    with staged_folder(final) as stage:
        save_model(model, stage, state=weights)
        copy_model_files(source, stage)
        if extra_files is not None:  # e.g. a LoRA adapter beside the weights
            extra_files(stage)
        torch.save(state, stage / STATE)
    write_text_atomic(Path(output) / LATEST, final.name + "\n")
    return final


def latest_checkpoint(output: Path) -> Path | None:
    pointer = Path(output) / LATEST
    if not pointer.exists():
        return None
    folder = Path(output) / pointer.read_text().strip()
    restore_aside(folder)  # a kill while this step was being saved again
    if not (folder / STATE).exists():
        raise CheckpointError(f"{pointer} names {folder.name}, which has no {STATE}")
    return folder


def load_state(folder: Path) -> dict:
    """A checkpoint's trainer state, unpickled with weights_only (tensors and plain values only:
    a crafted file cannot run code)."""
    try:
        return torch.load(Path(folder) / STATE, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{Path(folder) / STATE}: not a trainer state this version can read ({first})") from None


def rng_state() -> dict:
    """The random generators' states as tensors and plain values (loadable with weights_only)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
