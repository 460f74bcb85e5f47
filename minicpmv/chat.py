"""The public Python API: `minicpmv.load(path)` -> a `ChatModel` with `chat()` and `generate()`.

It joins the three separate layers: the processor (text, images, tokens), the model (tensors)
and the engine (decoding).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .engine import greedy_generate
from .errors import ConfigError, PromptError
from .model.checkpoint import load_model
from .model.minicpmv import MiniCPMV
from .processing import MiniCPMVProcessor

# Token strings that end an answer, per version (looked up in the tokenizer, never hard-coded ids).
TERMINATORS = {"2.6": ("<|im_end|>", "<|endoftext|>"), "2.5": ("<|end_of_text|>", "<|eot_id|>"), "2.0": ("</s>",)}
MAX_INPUT_LENGTH = {"2.6": 8192, "2.5": 2048, "2.0": 2048}
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """cuda, then mps, then cpu, unless one is named."""
    if device not in (None, "auto"):
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 matmuls are slow without native support), bfloat16 on CUDA, float16 on MPS."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return {"cuda": torch.bfloat16, "mps": torch.float16}.get(device.type, torch.float32)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class Generation:
    text: str
    token_ids: list[int]  # new tokens only
    prompt_token_ids: list[int]  # the full input after placeholder expansion
    prefill_seconds: float
    decode_seconds: float


class ChatModel:
    """A loaded checkpoint: model, processor and tokenizer together."""

    def __init__(self, model: MiniCPMV, processor: MiniCPMVProcessor, load_seconds: float = 0.0):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.load_seconds = load_seconds
        version = processor.config.version
        names = [*TERMINATORS[version], self.tokenizer.special_tokens.get("eos_token")]
        self.stop_ids = {i for i in (self.tokenizer.token_to_id(n) for n in names if n) if i is not None}

    def generate(self, messages: list, *, image=None, max_new_tokens: int = 1024, system_prompt: str | None = None,
                 max_slice_nums: int | None = None, use_image_id: bool | None = None,
                 max_input_length: int | None = None) -> Generation:
        """Greedy answer to one conversation, with token ids and timings."""
        if max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        messages = _with_image(messages, image)
        limit = max_input_length or MAX_INPUT_LENGTH[self.processor.config.version]
        inputs = self.processor(messages, max_slice_nums=max_slice_nums, use_image_id=use_image_id,
                                system_prompt=system_prompt, max_length=limit)
        out = greedy_generate(self.model, inputs.input_ids, inputs.attention_mask, inputs.pixel_values,
                              inputs.tgt_sizes, inputs.image_bound, max_new_tokens, self.stop_ids)
        ids = out.token_ids[0]
        return Generation(self.tokenizer.decode(ids).strip(), ids, inputs.input_ids[0].tolist(),
                          out.prefill_seconds, out.decode_seconds)

    def chat(self, messages: list, **options) -> str:
        """The answer text; options as in `generate`."""
        return self.generate(messages, **options).text


def _with_image(messages: list, image) -> list:
    """Like the official chat(image=...): the image goes first into the first user message."""
    if image is None:
        return messages
    first, *rest = messages
    content = first["content"] if isinstance(first["content"], list) else [first["content"]]
    return [{**first, "content": [image, *content]}, *rest]


def load(path: str | Path, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None) -> ChatModel:
    """Load an official MiniCPM-V 2.0 / 2.5 / 2.6 checkpoint folder (or one of ours).

    Args:
        path: folder with config.json, safetensors weights and tokenizer files.
        dtype: "float32", "bfloat16", "float16" or a torch dtype; default float32 on CPU,
            bfloat16 on CUDA, float16 on MPS.
        device: "cpu", "cuda", "mps"...; default the best available.
    """
    start = time.perf_counter()
    target = pick_device(device)
    model = load_model(path, pick_dtype(dtype, target), target)
    processor = MiniCPMVProcessor.from_pretrained(path)
    return ChatModel(model, processor, time.perf_counter() - start)
