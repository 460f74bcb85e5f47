"""Everything between user input and token ids: images, slicing, placeholders, prompts, tokenizers.

Slicing and placeholder text live here and nowhere else.
"""

from .config import ProcessorConfig
from .image_io import DEFAULT_MAX_PIXELS, load_image
from .pixels import EncodedImage, encode_image
from .placeholders import IMAGE_TAG, compact_placeholder, image_placeholder
from .processor import MiniCPMVProcessor, ModelInputs
from .slicing import SlicePlan, choose_grid, ensure_divide, find_best_resize, plan_slices, refine_size
from .tokenizer import TextTokenizer, load_tokenizer

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EncodedImage",
    "IMAGE_TAG",
    "MiniCPMVProcessor",
    "ModelInputs",
    "ProcessorConfig",
    "SlicePlan",
    "TextTokenizer",
    "choose_grid",
    "compact_placeholder",
    "encode_image",
    "ensure_divide",
    "find_best_resize",
    "image_placeholder",
    "load_image",
    "load_tokenizer",
    "plan_slices",
    "refine_size",
]
