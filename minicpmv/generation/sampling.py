"""Decoding settings and the logits transforms of sampling, as pure functions on (B, V) logits.

The semantics follow transformers' processors, which produced the official outputs:
repetition penalty divides positive and multiplies negative scores of every token already
generated; top-k, top-p and min-p remove tokens by setting them to -inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

# Bounds that keep the float32 arithmetic of sampling finite: scores are divided by the temperature
# and by the repetition penalty, so values near 0 (or inf/NaN) turn logits into inf and the
# softmax into NaN. A torch generator takes a seed below 2**64.
LIMITS = {"temperature": (0.0, 100.0), "top_p": (0.0, 1.0), "min_p": (0.0, 1.0), "repetition_penalty": (0.01, 100.0)}
MAX_SEED = 2**64 - 1
MAX_BEAMS = 64
MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick tokens. num_beams > 1 is beam search; else do_sample picks sampling or greedy."""

    max_new_tokens: int = 1024
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    seed: int | None = None
    logprobs: int | None = None  # keep each new token's log-probability and this many alternatives
    stop_ids: frozenset = field(default_factory=frozenset)

    def with_options(self, **options) -> GenerationConfig:
        """A copy with the given fields changed; None values leave a field as it is."""
        return replace(self, **{k: v for k, v in options.items() if v is not None})

    def problems(self) -> list[str]:
        """What is out of range, one phrase per field (empty when every field is usable)."""
        found = []
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or not low <= value <= high
                or (name == "top_p" and value == 0)
            ):
                found.append(
                    f"{name} must be a number in {'(' if name == 'top_p' else '['}{low}, {high}], got {value!r}"
                )
        for name, low, high in (
            ("max_new_tokens", 1, 1 << 31),
            ("min_new_tokens", 0, self.max_new_tokens),
            ("top_k", 0, 1 << 31),
            ("num_beams", 1, MAX_BEAMS),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                found.append(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if self.logprobs is not None and (
            not isinstance(self.logprobs, int)
            or isinstance(self.logprobs, bool)
            or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            found.append(f"logprobs must be an integer in [0, {MAX_LOGPROBS}], got {self.logprobs!r}")
        if self.logprobs is not None and self.num_beams > 1:
            found.append("logprobs are given for greedy or sampled answers, not beam search")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED):
            found.append(f"seed must be an integer in [0, 2**64 - 1], got {self.seed!r}")
        return found


# The official chat() presets: sampling=True and sampling=False (docs/generation.md). The
# sampling values differ per version: each version's row in versions.py has them.
PRESETS = {
    "sampling": GenerationConfig(do_sample=True),
    "precise": GenerationConfig(num_beams=3, repetition_penalty=1.2),
    "greedy": GenerationConfig(),
}


def apply_repetition_penalty(scores: torch.Tensor, generated: list[list[int]], penalty: float) -> torch.Tensor:
    """Scores of tokens already generated in each row: divided by `penalty` if positive, multiplied if not."""
    if penalty == 1.0:
        return scores
    scores = scores.clone()
    for row, ids in enumerate(generated):
        if not ids:
            continue
        index = torch.tensor(sorted(set(ids)), device=scores.device)
        picked = scores[row, index]
        scores[row, index] = torch.where(picked < 0, picked * penalty, picked / penalty)
    return scores


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores of each row (ties at the k-th value are kept)."""
    if k <= 0 or k >= scores.shape[-1]:
        return scores
    threshold = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < threshold, float("-inf"))


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens whose probability mass reaches p; the best one always stays.

    Like transformers: sort ascending and drop the tail whose cumulative mass is at most 1 - p.
    """
    if p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
    remove_sorted = sorted_scores.softmax(-1).cumsum(-1) <= (1 - p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


def min_p_filter(scores: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    if min_p <= 0.0:
        return scores
    probs = scores.softmax(-1)
    threshold = probs.max(-1, keepdim=True).values * min_p
    return scores.masked_fill(probs < threshold, float("-inf"))


def suppress_stop_tokens(scores: torch.Tensor, stop_ids, step: int, min_new_tokens: int) -> torch.Tensor:
    """Before min_new_tokens are generated, stop tokens cannot be chosen."""
    if step >= min_new_tokens or not stop_ids:
        return scores
    scores = scores.clone()
    scores[:, sorted(stop_ids)] = float("-inf")
    return scores


def next_tokens(
    logits: torch.Tensor,
    generated: list[list[int]],
    config: GenerationConfig,
    step: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from (B, V) logits: greedy, or sampled after the filters."""
    scores = logits.float()
    scores = apply_repetition_penalty(scores, generated, config.repetition_penalty)
    scores = suppress_stop_tokens(scores, config.stop_ids, step, config.min_new_tokens)
    if not config.do_sample:
        return scores.argmax(-1)
    scores = scores / max(config.temperature, 1e-5)
    scores = min_p_filter(top_p_filter(top_k_filter(scores, config.top_k), config.top_p), config.min_p)
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(-1)
