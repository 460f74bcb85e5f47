"""What differs between MiniCPM-V generations, as data: one row of facts per version, read by the
processor, the model, chat, training and evaluation (none of them tests a version string); and
which generation a config.json describes."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class VersionFacts:
    """The facts of one generation that code branches on. A new version is a new row."""

    llm_family: str  # the decoder's architecture: "minicpm", "llama", "qwen2"
    query_num: int  # resampler queries per crop (the official checkpoints' image_feature_size)
    # placeholders: "ids" (2.6: [<image_id>i</image_id>] <image>..</image> then rows of
    # <slice>..</slice>, each slice its own image span) or "nested" (2.5, 2.0: <image>..</image>
    # then <slice> rows of <image>..</image> </slice>, only <image> bounds a span)
    placeholder_schema: str
    newline_after_image: bool  # 2.0 writes "\n" after a placeholder, as part of it
    chat_format: str  # "template": the tokenizer's jinja chat_template; "minicpm2": <用户>/<AI> turns
    terminators: tuple[str, ...]  # tokens that end an answer (besides the tokenizer's EOS)
    end_marker: str | None  # the token that closes an answer in training text; None: EOS appended
    max_input_length: int  # the official chat()'s max_inp_length
    vision_tower: str  # "navit" (SigLIP with per-crop sizes) or "timm" (2.0's ViT)
    drop_vision_last_layer: bool  # the default when config.json does not say
    faithful_idefics2_mask: bool  # 2.5: vision output depends on the longest crop of a call
    query_pos_embed: bool  # 2.0's resampler adds a position embedding to its queries

    @property
    def use_image_id(self) -> bool:
        return self.placeholder_schema == "ids"


VERSIONS = {
    "2.0": VersionFacts("minicpm", 64, "nested", True, "minicpm2", ("</s>",), None, 2048, "timm", True, False, True),
    "2.5": VersionFacts(
        "llama",
        96,
        "nested",
        False,
        "template",
        ("<|end_of_text|>", "<|eot_id|>"),
        "<|eot_id|>",
        2048,
        "navit",
        False,
        True,
        False,
    ),
    "2.6": VersionFacts(
        "qwen2",
        64,
        "ids",
        False,
        "template",
        ("<|im_end|>", "<|endoftext|>"),
        "<|im_end|>",
        8192,
        "navit",
        True,
        False,
        False,
    ),
}
SUPPORTED_VERSIONS = tuple(VERSIONS)


def facts(version: str) -> VersionFacts:
    """The row of a (normalized) version."""
    return VERSIONS[normalize_version(version)]


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
