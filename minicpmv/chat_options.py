"""The decoding options of ChatModel.chat / generate / stream: which names a caller may set,
the version's presets, and the checks: one place for the API, the CLI (which checks them before
a model loads) and the server."""

from __future__ import annotations

from dataclasses import fields

from .errors import PromptError
from .generation import PRESETS, GenerationConfig
from .versions import facts

# the decoding settings a caller may set: GenerationConfig's fields but the derived ones
SAMPLING_OPTIONS = tuple(f.name for f in fields(GenerationConfig) if f.name not in ("do_sample", "stop_ids"))


def decoding_config(preset: str, version: str, thinking: bool = False, **sampling) -> GenerationConfig:
    """The settings of `preset` for `version` with the caller's options on top, checked
    (PromptError naming each problem); a temperature given turns sampling on (> 0) or off (0)."""
    unknown = set(sampling) - set(SAMPLING_OPTIONS)
    if unknown:
        raise PromptError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
    config = preset_config(preset, version, thinking).with_options(**sampling)
    problems = config.problems()
    if problems:
        raise PromptError("; ".join(problems))
    if sampling.get("temperature") is not None:
        config = config.with_options(do_sample=sampling["temperature"] > 0)
    return config


def preset_config(preset: str, version: str, thinking: bool = False) -> GenerationConfig:
    """A preset's decoding settings for a version: "sampling" is that version's official
    chat(sampling=True) (4.5: its own with and without thinking); the others are shared."""
    if preset not in PRESETS:
        raise PromptError(f"preset: {preset!r} is not one of {sorted(PRESETS)}")
    if preset != "sampling":
        return PRESETS[preset]
    row = facts(version)
    return GenerationConfig(do_sample=True, **dict(row.thinking_sampling if thinking else row.sampling))
