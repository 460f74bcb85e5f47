"""minicpmv: run, train, align and evaluate MiniCPM-V models (2.0, 2.5, 2.6) natively in PyTorch."""

from .errors import CheckpointError, ConfigError, ImageError, MiniCPMVError, PromptError, PromptTooLongError

__version__ = "0.1.0"

# The model API is imported on first use, so that torch-free parts (the evaluation scorers,
# `minicpmv eval score`) import nothing heavy.
_LAZY = {
    "ChatModel": "chat",
    "load": "chat",
    "MiniCPMVProcessor": "processing",
    "ModelInputs": "processing",
    "ProcessorConfig": "processing",
    "SlicePlan": "processing",
    "load_image": "processing",
    "plan_slices": "processing",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ChatModel",
    "CheckpointError",
    "ConfigError",
    "ImageError",
    "MiniCPMVError",
    "MiniCPMVProcessor",
    "ModelInputs",
    "ProcessorConfig",
    "PromptError",
    "PromptTooLongError",
    "SlicePlan",
    "load",
    "load_image",
    "plan_slices",
    "__version__",
]
