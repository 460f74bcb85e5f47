"""Constrained decoding for `response_format` (JSON object or JSON schema) with llguidance (the
`structured` extra): before each token the grammar's matcher says which tokens may come next,
the others get -inf, and the chosen token advances the matcher. The model's own next choice
among the allowed tokens is kept, so greedy stays greedy and sampling samples.

llguidance was picked over xgrammar and outlines-core by measurement (docs/serving.md): it
builds its tokenizer from the `tokenizer.json` text with no transformers, compiles a schema in
milliseconds and computes a mask in microseconds per token.
"""

from __future__ import annotations

import json

import torch

from ..errors import PromptError


class JsonConstraint:
    """One answer's grammar state; `mask(scores)` in place, then `advance(token)`."""

    def __init__(self, tokenizer, vocab_size: int, eos_id: int, schema: dict | None):
        try:
            import llguidance
        except ImportError:
            raise PromptError("response_format needs llguidance: pip install 'minicpmv[structured]'") from None
        backend = getattr(tokenizer, "backend", None)
        if backend is None:
            raise PromptError("response_format works with tokenizer.json (byte-level BPE) models, not SentencePiece")
        llt = _tokenizer(llguidance, backend.to_str(), vocab_size, eos_id)
        # json.dumps' separators and no other whitespace: a model must not pad an answer with
        # newlines until max_tokens (the default grammar lets it)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema if schema is not None else {"type": "object"}),
            overrides={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "},
        )
        self.matcher = llguidance.LLMatcher(llt, grammar)
        if self.matcher.is_error():
            raise PromptError(f"response_format: the JSON schema is not usable ({self.matcher.get_error()})")
        self.vocab_size = vocab_size
        self.bits = torch.arange(8, dtype=torch.uint8)

    def mask(self, scores: torch.Tensor) -> None:
        """scores (V,): tokens the grammar does not allow next become -inf."""
        packed = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.uint8)
        allowed = ((packed[:, None] >> self.bits) & 1).reshape(-1)[: scores.shape[-1]].bool()  # (V,)
        scores.masked_fill_(~allowed.to(scores.device), float("-inf"))

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise PromptError(f"response_format: token {token} broke the grammar ({self.matcher.get_error()})")


_TOKENIZERS: dict = {}


def _tokenizer(llguidance, text: str, vocab_size: int, eos_id: int):
    key = (hash(text), vocab_size, eos_id)  # building one takes about a second for a real vocabulary
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = llguidance.LLTokenizer(text, n_vocab=vocab_size, eos_token=eos_id)
    return _TOKENIZERS[key]


def response_constraint(response_format: dict | None, tokenizer, vocab_size: int, eos_id: int):
    """A JsonConstraint for OpenAI's response_format, or None for text."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return JsonConstraint(tokenizer, vocab_size, eos_id, None)
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise PromptError("response_format.json_schema.schema: expected a JSON schema object")
        return JsonConstraint(tokenizer, vocab_size, eos_id, schema)
    raise PromptError(f"response_format.type: {kind!r} is not text, json_object or json_schema")
