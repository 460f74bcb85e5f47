"""A training-memory estimate printed before the first step (fine-tuning runs out
of memory and nobody can say beforehand how much it needs).

Weights at their dtype; gradients and AdamW's two moments in float32 for trainable parameters;
activations from the usual transformer count (per layer and token about 34 hidden-size values,
Korthikanti et al.), in float32 (or half with bf16
autocast), for the LLM at the configured length and batch and for the vision tower at
(slices + 1) crops of 1024 patches per image; attention scores are not counted, as fused
attention (SDPA) does not keep them. Gradient checkpointing keeps one input per layer plus one
layer's full activations. It is an estimate for the configured (longest) length: allocator
overhead comes on top, shorter batches need less.
"""

from __future__ import annotations

from ..processing.slicing import SCALE_RESOLUTION, slice_limit


def estimate_memory(model, recipe, images_per_sample: int = 1, autocast: bool = False) -> dict[str, int]:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    value_bytes = 2 if autocast else 4
    llm, vision = model.config.llm, model.config.vision
    tokens = recipe.batch_size * recipe.max_length
    per_layer = tokens * 34 * llm.hidden_size * value_bytes
    if recipe.gradient_checkpointing:
        llm_activations = llm.num_layers * tokens * llm.hidden_size * value_bytes + per_layer
    else:
        llm_activations = llm.num_layers * per_layer
    slices = slice_limit(recipe.max_slice_nums)
    crops = recipe.batch_size * images_per_sample * (slices + 1 if slices > 1 else 1)
    patches = ((recipe.scale_resolution or SCALE_RESOLUTION) // vision.patch_size) ** 2  # per crop
    trains_vision = any(part in recipe.train for part in ("vpm", "resampler"))
    vision_activations = (
        vision.num_layers * crops * patches * 34 * vision.hidden_size * value_bytes if trains_vision else 0
    )
    logits = tokens * llm.vocab_size * 4 * 2  # float32 logits and their gradient
    parts = {
        "weights": weights,
        "gradients": trainable * 4,
        "optimizer": trainable * 8,
        "activations": llm_activations + vision_activations + logits,
    }
    parts["total"] = sum(parts.values())
    return parts


def describe(parts: dict[str, int]) -> str:
    gib = {name: value / (1 << 30) for name, value in parts.items()}
    return (
        f"memory estimate: weights {gib['weights']:.2f} GiB + gradients {gib['gradients']:.2f} + "
        f"AdamW states {gib['optimizer']:.2f} + activations {gib['activations']:.2f} "
        f"= {gib['total']:.2f} GiB per process"
    )
