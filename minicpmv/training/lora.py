"""LoRA on the LLM's attention projections with peft (the official settings: r 64, alpha 64, dropout
0.05, q/k/v/o only), the resampler (and the vision encoder if the recipe says so) trained in
full beside the adapters.

An adapter folder holds `adapter_config.json` (peft's LoraConfig) and `adapter_model.safetensors`
with peft's names (`base_model.model.<module>.lora_A.weight`, ...) plus, under their official
names, the fully trained parts (peft's modules_to_save). `merge_lora` folds it into a base
checkpoint: W + (alpha / r) * B @ A for every adapted projection.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..files import check_output_folder, staged_folder
from ..jsonfile import read_json_object
from ..model.checkpoint import load_model, save_model

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def lora_config(recipe, with_saved_modules: bool = True):
    """peft's LoraConfig of a recipe. The fully trained parts are listed as modules_to_save in
    the saved adapter only: injected, peft would train a copy of them instead of the parts."""
    from peft import LoraConfig

    targets = "|".join(recipe.lora_targets)
    return LoraConfig(
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        bias="none",
        target_modules=rf"llm\.model\.layers\.\d+\.(self_attn|linear_attn)\.({targets})",
        modules_to_save=list(recipe.train) if with_saved_modules else None,
    )


def add_lora(model, recipe) -> None:
    """Put adapters into `model` in place (the LLM's own weights stay as they are)."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(lora_config(recipe, with_saved_modules=False), model)


def is_lora(name: str) -> bool:
    return ".lora_" in name


def official_state(state: dict) -> dict[str, torch.Tensor]:
    """A LoRA model's state dict under official names, adapters left out (peft wraps a
    projection as `<name>.base_layer`)."""
    return {name.replace(".base_layer", ""): tensor for name, tensor in state.items() if not is_lora(name)}


def save_adapter(model_state: dict, recipe, folder: Path) -> None:
    """Adapter weights and the fully trained parts from a LoRA model's (whole) state dict."""
    state = {}
    for name, tensor in model_state.items():
        if is_lora(name):
            state[PEFT_PREFIX + name.replace(".default", "")] = tensor.detach().contiguous().cpu()
        elif name.split(".")[0] in recipe.train:
            state[name] = tensor.detach().contiguous().cpu()
    save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = lora_config(recipe).to_dict()
    config = {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")


def load_adapter(model, folder: Path) -> None:
    """Adapter and fully trained parts of `folder` into a model that already has adapters."""
    state = _read_adapter(folder)[1]
    own = model.state_dict()
    for name, tensor in state.items():
        target = (
            name[len(PEFT_PREFIX) :].replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default.")
            if name.startswith(PEFT_PREFIX)
            else name
        )
        target = target if target in own else target.replace(".weight", ".base_layer.weight")
        if target not in own:
            raise CheckpointError(f"{folder}: adapter tensor {name} has no place in the model")
        own[target].copy_(tensor)


def _read_adapter(folder: Path) -> tuple[dict, dict]:
    """An adapter's config and tensors; a training run's folder stands for its newest checkpoint."""
    from .checkpoints import latest_checkpoint

    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).exists() and (folder / "latest").exists():
        folder = latest_checkpoint(folder)
    config = read_json_object(folder / ADAPTER_CONFIG, " (not a LoRA adapter folder)")
    try:
        state = load_file(str(folder / ADAPTER_WEIGHTS))
    except FileNotFoundError:
        raise CheckpointError(f"{folder / ADAPTER_WEIGHTS}: missing (not a LoRA adapter folder)") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a broken file
        raise CheckpointError(f"{folder / ADAPTER_WEIGHTS}: unreadable ({str(exc).splitlines()[0][:120]})") from None
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: r must be a positive integer, got {rank!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise CheckpointError(f"{folder / ADAPTER_CONFIG}: lora_alpha must be a number, got {alpha!r}")
    return config, state


def merge_lora(model_path: str | Path, adapter: str | Path, output: str | Path, force: bool = False) -> Path:
    """Base checkpoint + adapter folder -> an official-layout folder with the adapters folded in,
    staged and renamed into place (the base and the adapter are never written to)."""
    from .checkpoints import copy_model_files

    output = check_output_folder(output, force, {"the base checkpoint": model_path, "the adapter": adapter})
    config, state = _read_adapter(Path(adapter))
    scale = config["lora_alpha"] / config["r"]
    model = load_model(model_path)
    weights = model.state_dict()
    pairs: dict[str, dict] = {}
    for name, tensor in state.items():
        if name.startswith(PEFT_PREFIX):
            module, kind = name[len(PEFT_PREFIX) :].rsplit(".lora_", 1)
            pairs.setdefault(module, {})[kind.split(".")[0]] = tensor
        elif name in weights:
            weights[name].copy_(tensor)
        else:
            raise CheckpointError(f"{adapter}: tensor {name} is not in the base model")
    for module, pair in pairs.items():
        weight = weights.get(module + ".weight")
        if weight is None or set(pair) != {"A", "B"}:
            raise CheckpointError(f"{adapter}: adapter for {module} does not match the base model")
        # (out, in) += scale * (out, r) @ (r, in), in the weight's own dtype
        weight += (scale * pair["B"].float() @ pair["A"].float()).to(weight.dtype)
    with staged_folder(output) as stage:
        save_model(model, stage)
        copy_model_files(Path(model_path), stage)
    return output
