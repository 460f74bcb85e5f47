"""Generation on token ids and embeddings only: no tokenizer, no HTTP (the next issue adds
sampling, beams and streaming on top of this loop).

Left-padded batches follow HF generate: position ids are cumsum(mask) - 1 with pads set to 1,
and every step appends one real token per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .model.minicpmv import MiniCPMV


@dataclass
class GenerationOutput:
    token_ids: list[list[int]]  # new tokens per row, up to and excluding the first stop id
    step_logits: list[torch.Tensor] = field(default_factory=list)  # (B, V) per step, if asked
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


@torch.inference_mode()
def greedy_generate(
    model: MiniCPMV,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    pixel_values: list[list[torch.Tensor]],
    tgt_sizes: list[torch.Tensor],
    image_bound: list[torch.Tensor],
    max_new_tokens: int,
    stop_ids: set[int],
    keep_step_logits: bool = False,
) -> GenerationOutput:
    """Greedy decoding with a preallocated KV cache: one prefill, then one token per step."""
    import time

    device = model.device
    batch, prompt_len = input_ids.shape
    attention_mask = attention_mask.to(device)
    cache = model.llm.new_cache(batch, prompt_len + max_new_tokens)
    start = time.perf_counter()
    features = model.features_per_sample(pixel_values, tgt_sizes)
    embeds = model.embed_inputs(input_ids, features, image_bound)
    positions = padded_position_ids(attention_mask)
    logits = model.llm(embeds, positions, attention_mask, cache, last_only=True)[:, -1]  # (B, V)
    prefill_seconds = time.perf_counter() - start
    tokens, step_logits = [[] for _ in range(batch)], []
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    start = time.perf_counter()
    for step in range(max_new_tokens):
        if keep_step_logits:
            step_logits.append(logits.float().cpu())
        next_ids = logits.argmax(-1)  # (B,)
        for row, token in enumerate(next_ids.tolist()):
            if not done[row]:
                done[row] = token in stop_ids
                if not done[row]:
                    tokens[row].append(token)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=1)
        positions = positions[:, -1:] + 1
        logits = model.llm(model.llm.embed(next_ids[:, None]), positions, attention_mask, cache)[:, -1]
    return GenerationOutput(tokens, step_logits, prefill_seconds, time.perf_counter() - start)
