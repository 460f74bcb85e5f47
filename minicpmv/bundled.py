"""The demo model that ships inside the package (trained by `scripts/train_demo_model.py` on
the generated world of `minicpmv.demo`): what `generate`, `chat` and `serve` answer with when
no -m is given, so that everything runs with no download."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

DEMO_MODEL = Path(__file__).parent / "assets" / "demo-model"
DEMO_IMAGE = Path(__file__).parent / "assets" / "demo-scene.png"
DEMO_RECEIPT = Path(__file__).parent / "assets" / "demo-receipt.png"  # a high-resolution page: slicing reads it


def demo_model_path() -> Path:
    """The bundled checkpoint folder; a clear error where an installation lacks it."""
    if not (DEMO_MODEL / "model.safetensors").is_file():
        raise ConfigError(f"the bundled demo model is missing ({DEMO_MODEL}); pass -m CHECKPOINT_FOLDER")
    return DEMO_MODEL
