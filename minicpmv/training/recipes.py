"""The paper's training stages as data (docs/training.md): which parts train, at what
resolution and slicing, with which optimiser settings. A recipe is a plain dataclass; a YAML
file or command-line `key=value` pairs override any field."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

PARTS = ("vpm", "resampler", "llm")

OPTIONAL_TYPES = {"int | None": 0, "float | None": 0.0}  # an unset optional setting is checked as its type


@dataclass
class Recipe:
    name: str
    train: tuple[str, ...]  # parts trained in full (the rest is frozen)
    scale_resolution: int | None = None  # None: the checkpoint's (448)
    max_slice_nums: int | None = None  # 1: a single view, no slicing; None: the checkpoint's (9)
    lora: bool = False  # peft adapters on the LLM token-mixer projections (the LLM itself frozen)
    lora_rank: int = 64
    lora_alpha: int = 64
    lora_dropout: float = 0.05
    # the token mixers' projections: attention, and 4.6/4.7's Gated DeltaNet layers
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "in_proj_qkv", "in_proj_z", "out_proj")
    learning_rate: float = 1e-5
    vpm_learning_rate: float | None = None  # None: learning_rate (as LLaVA-NeXT's mm_vision_tower_lr)
    resampler_learning_rate: float | None = None  # None: learning_rate
    weight_decay: float = 0.1
    adam_beta2: float = 0.95
    warmup_ratio: float = 0.01
    max_steps: int = 1000
    batch_size: int = 1  # samples per process per micro-batch
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    max_length: int = 2048
    packing: bool = False  # several samples per row of `max_length` tokens
    group_by_length: bool = False  # the alternative: batches of similar lengths
    precision: str = "auto"  # auto (bf16 autocast where the device computes bf16 natively), float32, bfloat16
    gradient_checkpointing: bool = False
    cache_image_features: bool = False  # frozen vision parts: encode each image once (training/feature_cache.py)
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    seed: int = 0
    distributed: str = "ddp"  # under torchrun: ddp, or fsdp for models that do not fit one device
    objective: str = "sft"  # sft: next-token loss on the answers; dpo: preference pairs (training/dpo.py)
    dpo_beta: float = 0.1  # DPO's beta (RLAIF-V's training scripts)
    sft_weight: float = 0.0  # DPO only: minus this times the chosen answers' summed log-prob
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        unknown = set(self.train) - set(PARTS)
        if unknown:
            raise ConfigError(f"recipe {self.name}: unknown part(s) {sorted(unknown)}; parts are {PARTS}")
        if self.lora and "llm" in self.train:
            raise ConfigError(f"recipe {self.name}: LoRA trains adapters on a frozen LLM; remove 'llm' from train")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"precision: {self.precision!r} is not auto, float32 or bfloat16")
        if self.distributed not in ("ddp", "fsdp"):
            raise ConfigError(f"distributed: {self.distributed!r} is not ddp or fsdp")
        if self.objective not in ("sft", "dpo"):
            raise ConfigError(f"objective: {self.objective!r} is not sft or dpo")
        if self.objective == "dpo" and (self.packing or self.cache_image_features):
            raise ConfigError(f"recipe {self.name}: DPO takes pairs as they are: no packing, no cached image features")
        if self.cache_image_features and {"vpm", "resampler"} & set(self.train):
            raise ConfigError(
                f"recipe {self.name}: cache_image_features needs the vision encoder and resampler "
                f"frozen, but train has {sorted({'vpm', 'resampler'} & set(self.train))}"
            )
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "lora_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name, low, high in RANGES:  # what torch would otherwise refuse mid-run with a traceback
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")
        if self.lora_dropout >= 1:
            raise ConfigError(f"lora_dropout must be below 1, got {self.lora_dropout}")


# (setting, lowest, highest) of the float settings
RANGES = (
    ("learning_rate", 0.0, 1.0),
    ("vpm_learning_rate", 0.0, 1.0),
    ("resampler_learning_rate", 0.0, 1.0),
    ("weight_decay", 0.0, 10.0),
    ("adam_beta2", 0.0, 0.999999),
    ("warmup_ratio", 0.0, 1.0),
    ("max_grad_norm", 0.0, 1e9),
    ("lora_dropout", 0.0, 1.0),
    ("lora_alpha", 1e-9, 1e9),
    ("dpo_beta", 1e-9, 1e3),
    ("sft_weight", 0.0, 1e3),
)


RECIPES = {
    # stage 1: the (new) compression layer alone, at SigLIP's own 224 px, no slicing
    "stage1": Recipe("stage1", ("resampler",), scale_resolution=224, max_slice_nums=1),
    # stage 2: the vision encoder alone, resolution raised to 448
    "stage2": Recipe("stage2", ("vpm",), scale_resolution=448, max_slice_nums=1),
    # stage 3: encoder + compression layer with adaptive slicing (up to 9 slices + overview)
    "stage3": Recipe("stage3", ("vpm", "resampler"), scale_resolution=448, max_slice_nums=9),
    # SFT: everything unfrozen
    "sft": Recipe("sft", ("vpm", "resampler", "llm")),
    # LoRA (official finetune_lora.sh): adapters on q/k/v/o, resampler trained in full
    "lora": Recipe("lora", ("resampler",), lora=True),
    # RLAIF-V's DPO (its published training scripts): every part, lr 5e-7, cosine with 5% warm-up, weight decay 0.01
    "dpo": Recipe(
        "dpo", ("vpm", "resampler", "llm"), objective="dpo", learning_rate=5e-7, warmup_ratio=0.05, weight_decay=0.01
    ),
    # the same with LoRA adapters on the LLM (lr 1e-5), everything else frozen
    "dpo-lora": Recipe(
        "dpo-lora", (), lora=True, objective="dpo", learning_rate=1e-5, warmup_ratio=0.05, weight_decay=0.01
    ),
}


def recipe(name: str, overrides: dict | None = None, config_file: str | Path | None = None) -> Recipe:
    """A named recipe with the fields of a YAML file, then `overrides`, applied on top."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    values = {}
    if config_file is not None:
        values.update(_read_yaml(Path(config_file)))
    values.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"unknown recipe setting(s): {', '.join(sorted(unknown))}")
    base = RECIPES[name]
    changed = {key: _checked(key, value, fields[key], getattr(base, key)) for key, value in values.items()}
    return dataclasses.replace(base, **changed)


def _checked(key: str, value, setting: dataclasses.Field, default):
    """`value` checked against the recipe's own value; an optional setting the recipe leaves unset
    (None) is checked against its annotated type, so that `--set vpm_learning_rate=3e-5` is read
    like `learning_rate`, and may be set back to None."""
    if default is None:
        if value is None or setting.type not in OPTIONAL_TYPES:
            return value
        default = OPTIONAL_TYPES[setting.type]
    return _coerce(key, value, default)


def parse_assignments(pairs: list[str]) -> dict:
    """`key=value` strings (the CLI's --set) -> dict; values are read as YAML scalars."""
    import yaml

    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        result[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return result


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the recipe file ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of recipe settings")
    return values


def _coerce(key: str, value, default):
    """Check a setting's type against the recipe's own value (ints accepted for floats)."""
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(value)
    if isinstance(default, float) and isinstance(value, str):
        try:  # YAML reads "3e-5" (no dot) as a string
            value = float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool) and isinstance(value, bool) or isinstance(default, str) and isinstance(value, str):
        return value
    if isinstance(default, float) and number:
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, int) and number:
        return value
    raise ConfigError(f"{key}: expected {type(default).__name__}, got {value!r}")
