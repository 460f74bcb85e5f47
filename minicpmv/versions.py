"""What differs between MiniCPM-V generations, as data: one row of facts per version, read by the
processor, the model, chat, training and evaluation (none of them tests a version string); and
which generation a config.json describes."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

# the official chat(sampling=True) settings of 2.0-2.6
_SAMPLING_2X = (("top_p", 0.8), ("top_k", 100), ("temperature", 0.7), ("repetition_penalty", 1.05))


@dataclass(frozen=True)
class VersionFacts:
    """The facts of one generation that code branches on. A new version is a new row."""

    llm_family: str  # the decoder's architecture: "minicpm", "llama", "qwen2", "qwen3"
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
    query_pos_embed: bool  # 2.0 / 1.0: the resampler adds a stored 8x8 position table to its queries
    sampling: tuple[tuple[str, float], ...] = _SAMPLING_2X  # the official chat(sampling=True)
    slicing: bool = True  # False (1.0): one view, squashed to scale_resolution² whatever its aspect
    # keys of the resampler: "sincos" (2-D sin-cos of the crop's patch grid) or "stored" (1.0:
    # the stored query table, bicubic-upsampled to the patch grid, Qwen-VL style)
    key_positions: str = "sincos"
    # 4.5's 3-D resampler: crops are grouped by temporal ids (a still crop is a group of one)
    # and each group's keys carry a 1-D sin-cos time embedding
    temporal: bool = False
    # 4.5: the template takes enable_thinking; thinking answers start with "<think>\n"
    thinking: bool = False
    thinking_sampling: tuple[tuple[str, float], ...] = ()  # chat(sampling=True, enable_thinking=True)
    video_recipe: str = "frames"  # "frames" (2.6: one image per frame) or "packed" (4.5: grouped frames)
    # llama.cpp's name for this generation in a projector GGUF (clip.minicpmv_version); None: its
    # multimodal path has no MiniCPM-V of this version
    llamacpp_version: int | None = None
    # 4.6 / 4.7 have no resampler: a crop of rows x cols patches gives rows*cols / m² tokens, m
    # patches per side folded together by the mergers in each downsample mode (the first one is
    # the default), and every resized side is a multiple of m patches
    downsample: tuple[tuple[str, int], ...] = ()
    feature_token: str = "<unk>"  # the placeholder token the image features replace
    # pixels: "pil" (PIL bicubic, then (k/255 - 0.5)/0.5) or "torch" (4.6/4.7's torchvision
    # backend: antialiased bicubic on uint8 tensors, then (k - 127.5)/127.5 in one step)
    pixel_backend: str = "pil"
    # vision position buckets: "arange" (2.x: arange(0, 1 - 1e-6, 1/n)) or "fraction" (4.6:
    # arange(n) / n); float32 rounding makes them differ for some n
    position_rule: str = "arange"
    # (ours, official) parameter-name prefixes where the official module tree differs from the
    # package's vpm / resampler / llm one (4.6 / 4.7: transformers' native names)
    checkpoint_prefixes: tuple[tuple[str, str], ...] = ()
    canvas_rope: bool = False  # 4.7: 3-D M-RoPE positions laid out on the image canvas
    # repetition_penalty also counts the prompt's tokens: 4.6/4.7 run transformers' own generate
    # on input ids; the remote-code chat() of 1.0-4.5 hands it embeddings only
    penalty_counts_prompt: bool = False

    @property
    def use_image_id(self) -> bool:
        return self.placeholder_schema == "ids"

    @property
    def downsample_modes(self) -> tuple[str, ...]:
        return tuple(mode for mode, _ in self.downsample)

    def merge_per_side(self, mode: str | None) -> int:
        """Patches per side folded into one token in `mode` (1: no merging, a resampler instead)."""
        if not self.downsample:
            return 1
        table = dict(self.downsample)
        if mode is None:
            return self.downsample[0][1]
        if mode not in table:
            raise ConfigError(f"downsample_mode: {mode!r} is not one of {self.downsample_modes}")
        return table[mode]

    def crop_tokens(self, tgt_size, mode: str | None, query_num: int) -> int:
        """Image tokens of a crop of (rows, cols) patches: the resampler's query_num, or (4.6/4.7)
        its patches merged as `mode` says."""
        if not self.downsample:
            return query_num
        rows, cols = tgt_size
        return rows * cols // self.merge_per_side(mode) ** 2


VERSIONS = {
    # 1.0 (the paper's first model): 2.0's parts without slicing; its resampler is Qwen-VL's
    "1.0": VersionFacts(
        llm_family="minicpm",
        query_num=64,
        placeholder_schema="nested",
        newline_after_image=True,
        chat_format="minicpm2",
        terminators=("</s>",),
        end_marker=None,
        max_input_length=2048,
        vision_tower="timm",
        drop_vision_last_layer=True,
        faithful_idefics2_mask=False,
        query_pos_embed=True,
        sampling=(("top_p", 0.8), ("top_k", 100), ("temperature", 0.6)),
        slicing=False,
        key_positions="stored",
    ),
    "2.0": VersionFacts(
        llm_family="minicpm",
        query_num=64,
        placeholder_schema="nested",
        newline_after_image=True,
        chat_format="minicpm2",
        terminators=("</s>",),
        end_marker=None,
        max_input_length=2048,
        vision_tower="timm",
        drop_vision_last_layer=True,
        faithful_idefics2_mask=False,
        query_pos_embed=True,
    ),
    "2.5": VersionFacts(
        llm_family="llama",
        query_num=96,
        placeholder_schema="nested",
        newline_after_image=False,
        chat_format="template",
        terminators=("<|end_of_text|>", "<|eot_id|>"),
        end_marker="<|eot_id|>",
        max_input_length=2048,
        vision_tower="navit",
        drop_vision_last_layer=False,
        faithful_idefics2_mask=True,
        query_pos_embed=False,
        llamacpp_version=2,
    ),
    "2.6": VersionFacts(
        llm_family="qwen2",
        query_num=64,
        placeholder_schema="ids",
        newline_after_image=False,
        chat_format="template",
        terminators=("<|im_end|>", "<|endoftext|>"),
        end_marker="<|im_end|>",
        max_input_length=8192,
        vision_tower="navit",
        drop_vision_last_layer=True,
        faithful_idefics2_mask=False,
        query_pos_embed=False,
        llamacpp_version=3,
    ),
    "4.5": VersionFacts(
        llm_family="qwen3",
        query_num=64,
        placeholder_schema="ids",
        newline_after_image=False,
        chat_format="template",
        terminators=("<|im_end|>", "<|endoftext|>"),
        end_marker="<|im_end|>",
        max_input_length=16384,
        vision_tower="navit",
        drop_vision_last_layer=False,
        faithful_idefics2_mask=False,
        query_pos_embed=False,
        sampling=(("temperature", 0.7), ("top_p", 0.8), ("top_k", 100), ("repetition_penalty", 1.03)),
        temporal=True,
        thinking=True,
        # the official chat() sets only the temperature; top_p / top_k come from generation_config.json
        thinking_sampling=(("temperature", 0.7), ("top_p", 0.95), ("top_k", 20)),
        video_recipe="packed",
        llamacpp_version=6,
    ),
}
# 4.6: SigLIP2 tower with a window-attention merger + Qwen3.5 (Gated DeltaNet); 4.7: the same
# parts, with M-RoPE positions on the image canvas (and a mixture-of-experts LLM variant)
_NATIVE_46 = dict(
    llm_family="qwen3_5",
    query_num=0,
    placeholder_schema="ids",
    newline_after_image=False,
    chat_format="template",
    terminators=("<|im_end|>", "<|endoftext|>"),
    end_marker="<|im_end|>",
    max_input_length=32768,
    vision_tower="navit",
    drop_vision_last_layer=False,
    faithful_idefics2_mask=False,
    query_pos_embed=False,
    sampling=(("temperature", 0.7), ("top_p", 0.8), ("top_k", 20)),
    thinking=True,
    thinking_sampling=(("temperature", 0.6), ("top_p", 0.95), ("top_k", 20)),
    downsample=(("16x", 4), ("4x", 2)),
    feature_token="<|image_pad|>",
    pixel_backend="torch",
    position_rule="fraction",
    penalty_counts_prompt=True,
    checkpoint_prefixes=(
        ("vpm.", "model.vision_tower."),
        ("resampler.", "model.merger."),
        ("llm.model.", "model.language_model."),
        ("llm.lm_head.", "lm_head."),
    ),
)
VERSIONS["4.6"] = VersionFacts(**_NATIVE_46)
VERSIONS["4.7"] = VersionFacts(**_NATIVE_46 | {"canvas_rope": True})
SUPPORTED_VERSIONS = tuple(VERSIONS)
# transformers' native model types (no `version` key in their config.json)
NATIVE_MODEL_TYPES = {"minicpmv4_6": "4.6", "minicpmv4_7": "4.7"}


def facts(version: str) -> VersionFacts:
    """The row of a (normalized) version."""
    return VERSIONS[normalize_version(version)]


def normalize_version(value: object) -> str:
    """'2.6', 2.6, '4.5', 2, '1.0' ... -> canonical string; anything else is a ConfigError."""
    try:
        text = f"{float(value):.1f}"
    except (TypeError, ValueError):
        raise ConfigError(f"version: unsupported value {value!r}; expected one of {SUPPORTED_VERSIONS}") from None
    if text not in SUPPORTED_VERSIONS:
        raise ConfigError(f"version: MiniCPM-V {text} is not supported; expected one of {SUPPORTED_VERSIONS}")
    return text


# config.json keys that 2.0 added for its slicing; the 1.0 config, with the same timm encoder and
# MiniCPM LLM, has none of them (vLLM, which checks only `version`, runs 1.0 as a 2.0)
_SLICING_KEYS = ("slice_mode", "max_slice_nums", "scale_resolution", "slice_start_token_id")


def detect_version(config: dict) -> str:
    """Version of a checkpoint from its config.json contents.

    2.5 and later write `version`. 1.0 and 2.0 have none; they are the only ones with a timm
    `vision_encoder` and MiniCPM's `scale_emb`, and they differ in 2.0's slicing keys.
    """
    if "version" in config:
        return normalize_version(config["version"])
    if config.get("model_type") in NATIVE_MODEL_TYPES:
        return NATIVE_MODEL_TYPES[config["model_type"]]
    if config.get("model_type") not in (None, "minicpmv"):
        raise ConfigError(f"model_type: {config.get('model_type')!r} is not a MiniCPM-V model (expected 'minicpmv')")
    if "vision_encoder" in config or "scale_emb" in config:
        return "2.0" if any(key in config for key in _SLICING_KEYS) else "1.0"
    raise ConfigError("version: cannot tell the MiniCPM-V version (no 'version', 'vision_encoder' or 'scale_emb' key)")
