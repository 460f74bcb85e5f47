"""How much a quantized model departs from its original, on fixed prompts and images.

For each sample the original answers greedily; both models then score that same token sequence
(teacher forcing), giving per-position next-token distributions to compare: top-1 agreement and
mean KL(original || quantized) over the answer positions. Greedy text equality is reported too.
"""

from __future__ import annotations

from importlib import resources

import torch

DEFAULT_SAMPLES = [
    ("example", "Describe the image."),
    ("example", "What is the total on the receipt?"),
    (None, "Write two sentences about the sea."),
]


def example_image_path() -> str:
    return str(resources.files("minicpmv") / "assets" / "example.png")


@torch.inference_mode()
def answer_logits(chat, messages: list, answer: list[int]) -> torch.Tensor:
    """(len(answer), V) float32 logits predicting each answer token, by teacher forcing."""
    _, embeds, positions = chat.prompt_inputs(messages)
    llm = chat.model.llm
    tokens = torch.tensor([answer[:-1]], dtype=torch.long, device=embeds.device)
    full = torch.cat([embeds, llm.embed(tokens)], dim=1) if answer[:-1] else embeds
    if positions is not None:  # 4.7's canvas positions: the answer continues after the last
        after = positions[..., -1:] + torch.arange(1, len(answer))
        positions = torch.cat([positions, after], dim=-1).to(embeds.device)
    logits = llm(full, positions)[0].float()
    return logits[embeds.shape[1] - 1 :]


def compare(reference, candidate, samples=None, new_tokens: int = 32) -> dict:
    """Per-sample and mean figures of `candidate` against `reference` (two ChatModels)."""
    rows = []
    for image, question in samples or DEFAULT_SAMPLES:
        source = example_image_path() if image == "example" else image
        messages = [{"role": "user", "content": ([{"image": source}] if source else []) + [question]}]
        original = reference.generate(messages, max_new_tokens=new_tokens)
        quantized = candidate.generate(messages, max_new_tokens=new_tokens)
        answer = original.token_ids or [0]
        p_log = torch.log_softmax(answer_logits(reference, messages, answer), -1)
        q_log = torch.log_softmax(answer_logits(candidate, messages, answer), -1)
        kl = (p_log.exp() * (p_log - q_log)).sum(-1)
        rows.append(
            {
                "question": question,
                "image": bool(source),
                "positions": len(answer),
                "top1_agreement": (p_log.argmax(-1) == q_log.argmax(-1)).float().mean().item(),
                "mean_kl": kl.mean().item(),
                "greedy_text_equal": original.text == quantized.text,
            }
        )
    return {
        "samples": rows,
        "top1_agreement": sum(r["top1_agreement"] for r in rows) / len(rows),
        "mean_kl": sum(r["mean_kl"] for r in rows) / len(rows),
        "greedy_text_equal": sum(r["greedy_text_equal"] for r in rows),
        "num_samples": len(rows),
    }
