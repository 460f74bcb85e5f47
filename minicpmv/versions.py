"""Which MiniCPM-V generation a config.json describes. Shared by the processor and the model."""

from __future__ import annotations

from .errors import ConfigError

SUPPORTED_VERSIONS = ("2.0", "2.5", "2.6")


def normalize_version(value: object) -> str:
    """'2.6', 2.6, '2.5', 2.5, '2.0', 2 -> canonical string; anything else is a ConfigError."""
    try:
        text = f"{float(value):.1f}"
    except (TypeError, ValueError):
        raise ConfigError(f"version: unsupported value {value!r}; expected one of {SUPPORTED_VERSIONS}") from None
    if text not in SUPPORTED_VERSIONS:
        raise ConfigError(f"version: MiniCPM-V {text} is not supported; expected one of {SUPPORTED_VERSIONS}")
    return text


def detect_version(config: dict) -> str:
    """Version of a checkpoint from its config.json contents.

    2.5 and 2.6 write `version`; 2.0 has none but is the only one with a timm `vision_encoder`
    and MiniCPM's `scale_emb`.
    """
    if "version" in config:
        return normalize_version(config["version"])
    if config.get("model_type") not in (None, "minicpmv"):
        raise ConfigError(f"model_type: {config.get('model_type')!r} is not a MiniCPM-V model (expected 'minicpmv')")
    if "vision_encoder" in config or "scale_emb" in config:
        return "2.0"
    raise ConfigError("version: cannot tell the MiniCPM-V version (no 'version', 'vision_encoder' or 'scale_emb' key)")
