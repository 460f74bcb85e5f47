"""The generation engine. It works on embeddings and token ids only: the caller embeds the
prompt (image features included) and maps ids to text. Knows nothing of tokenizers or HTTP.

Left-padded batches follow HF generate: position ids are cumsum(mask) - 1 with pads set to 1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import PromptTooLongError
from ..model.llm import LanguageModel
from .sampling import GenerationConfig, apply_repetition_penalty, next_tokens, suppress_stop_tokens


@dataclass
class GenerationOutput:
    token_ids: list[list[int]]  # new tokens per row, excluding the stop token
    step_logits: list[torch.Tensor] | None = None  # (B, V) per step, when asked for
    # per row, per new token: (logprob, [(id, logprob) of the config.logprobs most likely]),
    # from the model's own distribution (log-softmax of the raw logits), when asked for
    logprobs: list[list[tuple]] | None = None
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    prompt_tokens: int = 0


def padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def prompt_positions(attention_mask: torch.Tensor, position_ids: torch.Tensor | None, repeat: int = 1):
    """The prompt's positions: (B, T) counting real tokens, or the given ones (4.7's canvas
    positions, (3, B, T)), each row repeated `repeat` times (beams). Decoding continues from the
    last one: it is the largest of its row in both cases."""
    if position_ids is None:
        return padded_position_ids(attention_mask)
    return position_ids.to(attention_mask.device).repeat_interleave(repeat, dim=-2)


def _room(llm: LanguageModel, prompt_len: int, config: GenerationConfig) -> int:
    """New tokens that fit in the context; a prompt that leaves no room is an error."""
    context = llm.cfg.max_position_embeddings
    if prompt_len + max(config.min_new_tokens, 1) > context:
        raise PromptTooLongError(f"the prompt is {prompt_len} tokens; the model's context is {context}")
    return min(config.max_new_tokens, context - prompt_len)


def _keep_logprobs(stats: GenerationOutput, logits, chosen: list[int], finished: list[bool], config) -> None:
    if stats.logprobs is None:
        stats.logprobs = [[] for _ in chosen]
    scores = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
    top = torch.topk(scores, config.logprobs, dim=-1) if config.logprobs else None
    for row, token in enumerate(chosen):
        if finished[row] or token in config.stop_ids:
            continue
        alternatives = list(zip(top.indices[row].tolist(), top.values[row].tolist())) if top is not None else []
        stats.logprobs[row].append((scores[row, token].item(), alternatives))


def stream_tokens(
    llm: LanguageModel,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    cancel: threading.Event | None = None,
    stats: GenerationOutput | None = None,
    threads: tuple[int, int] | None = None,
    constraints: list | None = None,
    position_ids: torch.Tensor | None = None,
    history: list[list[int]] | None = None,
) -> Iterator[list[int | None]]:
    """Greedy or sampled decoding, one step at a time: yields each row's new token (None once
    the row has stopped). Stops at the stop ids, max_new_tokens, or when `cancel` is set or the
    consumer stops iterating. `stats`, if given, receives timings and the kept step logits.
    `constraints`, one per row or None, restrict what each row may pick (structured.py).
    `threads` = (prefill, decode) CPU threads, as `minicpmv tune` found best. `position_ids`:
    the prompt's own positions where the model's are not 1-D (4.7, see prompt_positions).
    `history`: per row, earlier tokens the repetition penalty counts besides the new ones (4.6/4.7:
    the prompt's, as transformers' generate does when it is given input ids)."""
    original = torch.get_num_threads()
    try:
        yield from _stream_tokens(
            llm, inputs_embeds, attention_mask, config, cancel, stats, threads, constraints, position_ids, history
        )
    finally:
        torch.set_num_threads(original)


@torch.inference_mode()
def _stream_tokens(
    llm, inputs_embeds, attention_mask, config, cancel, stats, threads, constraints, position_ids, history
):
    batch, prompt_len = inputs_embeds.shape[:2]
    max_new = _room(llm, prompt_len, config)
    device = inputs_embeds.device
    attention_mask = attention_mask.to(device)
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    cache = llm.new_cache(batch, prompt_len + max_new)
    if threads:
        torch.set_num_threads(threads[0])
    start = time.perf_counter()
    positions = prompt_positions(attention_mask, position_ids)
    logits = llm(inputs_embeds, positions, attention_mask, cache, last_only=True)[:, -1]  # (B, V)
    if stats is not None:
        stats.prefill_seconds, stats.prompt_tokens = time.perf_counter() - start, prompt_len
    if threads:
        torch.set_num_threads(threads[1])
    start = time.perf_counter()
    generated = [[] for _ in range(batch)]
    penalized = [list(ids) for ids in history] if history else [[] for _ in range(batch)]  # see stream_tokens
    finished = [False] * batch
    for step in range(max_new):
        if cancel is not None and cancel.is_set():
            return
        if stats is not None and stats.step_logits is not None:
            stats.step_logits.append(logits.float().cpu())
        scores = logits
        if constraints:  # the grammar's allowed tokens only; logprobs stay the model's own
            scores = logits.clone()
            for row, constraint in enumerate(constraints):
                if constraint is not None and not finished[row]:
                    constraint.mask(scores[row])
        chosen = next_tokens(scores, penalized, config, step, generator).tolist()
        if stats is not None and config.logprobs is not None:
            _keep_logprobs(stats, logits, chosen, finished, config)
        out = []
        for row, token in enumerate(chosen):
            if finished[row] or token in config.stop_ids:
                finished[row] = True
                out.append(None)
            else:
                generated[row].append(token)
                penalized[row].append(token)
                out.append(token)
                if constraints and constraints[row] is not None:
                    constraints[row].advance(token)
        if stats is not None:
            stats.decode_seconds = time.perf_counter() - start
        if all(finished):
            return
        yield out
        if step == max_new - 1:
            return
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((batch, 1))], dim=1)
        positions = positions[..., -1:] + 1
        next_ids = torch.tensor([t if t is not None else 0 for t in chosen], device=device)[:, None]
        logits = llm(llm.embed(next_ids), positions, attention_mask, cache)[:, -1]
        if stats is not None:
            stats.decode_seconds = time.perf_counter() - start


def generate(
    llm: LanguageModel,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    keep_step_logits: bool = False,
    threads: tuple[int, int] | None = None,
    constraints: list | None = None,
    position_ids: torch.Tensor | None = None,
    history: list[list[int]] | None = None,
) -> GenerationOutput:
    """All new tokens of every row: beam search when config.num_beams > 1, else `stream_tokens`."""
    if config.num_beams > 1:
        original = torch.get_num_threads()
        try:
            if threads:
                torch.set_num_threads(threads[1])  # beams decode several rows: use the decode setting
            return beam_search(llm, inputs_embeds, attention_mask, config, position_ids, history)
        finally:
            torch.set_num_threads(original)
    stats = GenerationOutput([[] for _ in range(inputs_embeds.shape[0])], [] if keep_step_logits else None)
    steps = stream_tokens(
        llm,
        inputs_embeds,
        attention_mask,
        config,
        stats=stats,
        threads=threads,
        constraints=constraints,
        position_ids=position_ids,
        history=history,
    )
    for step in steps:
        for row, token in enumerate(step):
            if token is not None:
                stats.token_ids[row].append(token)
    return stats


class _Hypotheses:
    """Finished beams of one row, scored by log-probability / length (transformers' BeamHypotheses)."""

    def __init__(self, num_beams: int):
        self.num_beams, self.beams, self.worst = num_beams, [], float("inf")

    def add(self, tokens: list[int], log_prob: float, length: int):
        score = log_prob / max(length, 1)
        if len(self.beams) < self.num_beams or score > self.worst:
            self.beams.append((score, tokens))
            if len(self.beams) > self.num_beams:
                ranked = sorted(range(len(self.beams)), key=lambda i: self.beams[i][0])
                self.worst = self.beams[ranked[1]][0]
                del self.beams[ranked[0]]
            else:
                self.worst = min(score, self.worst)

    def done(self, best_log_prob: float, length: int) -> bool:
        return len(self.beams) >= self.num_beams and self.worst >= best_log_prob / max(length, 1)

    def best(self) -> list[int]:
        return sorted(self.beams, key=lambda b: b[0])[-1][1]


@torch.inference_mode()
def beam_search(
    llm: LanguageModel,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    config: GenerationConfig,
    position_ids: torch.Tensor | None = None,
    history: list[list[int]] | None = None,
) -> GenerationOutput:
    """Beam search as transformers runs it for the official `sampling=False` preset: repetition
    penalty on log-probabilities, 2 * beams candidates per step, length-normalised finished beams.
    `position_ids`, `history`: see stream_tokens."""
    batch, prompt_len = inputs_embeds.shape[:2]
    beams = config.num_beams
    max_new = _room(llm, prompt_len, config)
    device = inputs_embeds.device
    mask = attention_mask.to(device).repeat_interleave(beams, 0)  # (B*nb, T)
    cache = llm.new_cache(batch * beams, prompt_len + max_new)
    start = time.perf_counter()
    positions = prompt_positions(mask, position_ids, beams)
    logits = llm(inputs_embeds.repeat_interleave(beams, 0), positions, mask, cache, last_only=True)[:, -1]
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    scores = torch.zeros((batch, beams), device=device)
    scores[:, 1:] = -1e9  # all beams start identical: only the first may expand at step 0
    scores = scores.view(-1)
    sequences = [[] for _ in range(batch * beams)]
    hypotheses = [_Hypotheses(beams) for _ in range(batch)]
    done = [False] * batch
    candidates = max(2, 1 + len(config.stop_ids)) * beams
    for step in range(max_new):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        seen = [history[i // beams] + s for i, s in enumerate(sequences)] if history else sequences
        log_probs = apply_repetition_penalty(log_probs, seen, config.repetition_penalty)
        log_probs = suppress_stop_tokens(log_probs, config.stop_ids, step, config.min_new_tokens)
        vocab = log_probs.shape[-1]
        totals = (log_probs + scores[:, None]).view(batch, beams * vocab)
        top_scores, top_ids = torch.topk(totals, candidates, dim=1)
        new_scores, new_tokens, sources = [], [], []
        for b in range(batch):
            chosen = _select_beams(
                b,
                top_scores[b].tolist(),
                top_ids[b].tolist(),
                vocab,
                beams,
                step,
                sequences,
                hypotheses[b],
                config.stop_ids,
                done[b],
            )
            for score, token, source in chosen:
                new_scores.append(score), new_tokens.append(token), sources.append(source)
            done[b] = done[b] or hypotheses[b].done(top_scores[b].max().item(), step)
        if all(done):
            break
        sequences = [sequences[src] + [tok] for src, tok in zip(sources, new_tokens)]
        scores = torch.tensor(new_scores, device=device)
        if step == max_new - 1:
            break
        cache.reorder(torch.tensor(sources))
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        positions = positions[..., -1:] + 1
        logits = llm(llm.embed(torch.tensor(new_tokens, device=device)[:, None]), positions, mask, cache)[:, -1]
    for b in range(batch):
        if not done[b]:
            for j in range(beams):
                hypotheses[b].add(sequences[b * beams + j], scores[b * beams + j].item(), len(sequences[b * beams + j]))
    return GenerationOutput(
        [h.best() for h in hypotheses],
        prefill_seconds=prefill,
        decode_seconds=time.perf_counter() - start,
        prompt_tokens=prompt_len,
    )


def _select_beams(b, top_scores, top_ids, vocab, beams, step, sequences, hyps, stop_ids, is_done):
    """The next `beams` (score, token, source row) of row b; stop tokens among the best `beams`
    candidates finish a hypothesis instead."""
    if is_done:
        return [(0.0, 0, b * beams + j) for j in range(beams)]
    chosen = []
    for rank, (score, flat) in enumerate(zip(top_scores, top_ids)):
        source, token = b * beams + flat // vocab, flat % vocab
        if token in stop_ids:
            if rank < beams:
                hyps.add(list(sequences[source]), score, step)
            continue
        chosen.append((score, token, source))
        if len(chosen) == beams:
            break
    return chosen
