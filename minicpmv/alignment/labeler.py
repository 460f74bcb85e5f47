"""The labeler's verdict on a yes/no question about an image: the probabilities of the tokens
yes, Yes, no and No at the first answer step (one greedy step), after a repetition penalty over
the prompt's tokens (RLAIF-V's labeler ran with 1.2, which its scores include)."""

from __future__ import annotations

import torch

from ..generation.engine import generate
from ..generation.sampling import GenerationConfig, apply_repetition_penalty
from .feedback import NO_WORDS, YES_WORDS

LABELER_REPETITION_PENALTY = 1.2


def answer_token_ids(tokenizer) -> dict[str, int]:
    """Each answer word's first token: what the first answer step predicts. For a word that is
    one token (yes/Yes/no/No in the official tokenizers) this is RLAIF-V's "last id of
    BOS + word"; a tokenizer that splits the word ('y' + 'es') is asked for its first piece."""
    prefix = len(tokenizer.encode(""))  # what encode() adds by itself (a BOS), if anything
    return {word: tokenizer.encode(word)[prefix] for word in YES_WORDS + NO_WORDS}


@torch.inference_mode()
def yes_no_probabilities(
    chat, image, question: str, repetition_penalty: float = LABELER_REPETITION_PENALTY
) -> dict[str, float]:
    """{"yes", "Yes", "no", "No": probability} of the first answer token to `question` about
    `image` (a path, PIL image or None) asked of `chat` (a ChatModel)."""
    content = [image, question] if image is not None else question
    prompt_ids, embeds, positions = chat.prompt_inputs([{"role": "user", "content": content}])
    mask = torch.ones((1, embeds.shape[1]), dtype=torch.long)
    config = GenerationConfig(max_new_tokens=1)
    output = generate(chat.llm, embeds, mask, config, keep_step_logits=True, position_ids=positions)
    logits = apply_repetition_penalty(output.step_logits[0].float(), [prompt_ids], repetition_penalty)
    probabilities = torch.softmax(logits, dim=-1)[0]
    result, counted = {}, set()
    for word, token in answer_token_ids(chat.tokenizer).items():
        # two words on one token (a tokenizer that lower-cases) count that token once
        result[word] = 0.0 if token in counted else float(probabilities[token])
        counted.add(token)
    return result
