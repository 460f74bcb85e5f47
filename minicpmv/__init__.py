"""minicpmv: run, train, align and evaluate MiniCPM-V models (1.0, 2.0, 2.5, 2.6, 4.5) natively in PyTorch."""

from .errors import CheckpointError, ConfigError, ImageError, MiniCPMVError, PromptError, PromptTooLongError
from .lazy import lazy_getattr

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


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


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
