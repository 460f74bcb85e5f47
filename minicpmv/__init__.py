"""minicpmv: run, train, align and evaluate MiniCPM-V models (2.0, 2.5, 2.6) natively in PyTorch."""

from .errors import CheckpointError, ConfigError, ImageError, MiniCPMVError, PromptError, PromptTooLongError
from .chat import ChatModel, load
from .processing import MiniCPMVProcessor, ModelInputs, ProcessorConfig, SlicePlan, load_image, plan_slices

__version__ = "0.1.0"

__all__ = [
    "ChatModel", "CheckpointError", "ConfigError", "ImageError", "MiniCPMVError", "MiniCPMVProcessor",
    "ModelInputs", "ProcessorConfig", "PromptError", "PromptTooLongError", "SlicePlan",
    "load", "load_image", "plan_slices", "__version__",
]
