"""Decoding on embeddings and token ids: greedy, sampling, beam search, streaming."""

from .engine import GenerationOutput, beam_search, generate, padded_position_ids, stream_tokens
from .sampling import PRESETS, GenerationConfig

__all__ = [
    "GenerationConfig",
    "GenerationOutput",
    "PRESETS",
    "beam_search",
    "generate",
    "padded_position_ids",
    "stream_tokens",
]
