"""Everything between user input and token ids: images, slicing, placeholders, prompts, tokenizers.

Slicing and placeholder text live here and nowhere else. Names are imported on first use, so
that the torch-free parts (slicing, image files, configs: what `inspect-image` and the CLI's
argument checks need) load without torch.
"""

from ..lazy import lazy_getattr

_LAZY = {
    "ProcessorConfig": "config",
    "DEFAULT_MAX_PIXELS": "image_io",
    "load_image": "image_io",
    "EncodedImage": "pixels",
    "encode_image": "pixels",
    "IMAGE_TAG": "placeholders",
    "compact_placeholder": "placeholders",
    "image_placeholder": "placeholders",
    "MiniCPMVProcessor": "processor",
    "ModelInputs": "processor",
    "SlicePlan": "slicing",
    "choose_grid": "slicing",
    "ensure_divide": "slicing",
    "find_best_resize": "slicing",
    "plan_slices": "slicing",
    "refine_size": "slicing",
    "TextTokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = sorted(_LAZY)
