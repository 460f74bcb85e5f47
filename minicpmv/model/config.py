"""Model configs as plain dataclasses built from an official config.json (docs/model.md).

Unknown keys are ignored, missing keys take the official class defaults, and the version decides
the LLM family and the vision encoder: 4.5 = NaViT SigLIP + Qwen3, 2.6 = NaViT SigLIP + Qwen2,
2.5 = NaViT SigLIP (Idefics2 code) + Llama-3, 2.0 and 1.0 = timm SigLIP + MiniCPM.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..jsonfile import read_json_object
from ..versions import detect_version, facts

# SigLIP-so400m: the vision tower of every released MiniCPM-V 2.x
SO400M = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 980,
}


@dataclass
class VisionConfig:
    """SigLIP vision tower. `kind` is "navit" (2.5/2.6, variable resolution) or "timm" (2.0)."""

    kind: str = "navit"
    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27  # layers actually kept (after drop_vision_last_layer)
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 980  # navit: 980/14 = 70x70 position table; timm: 384/14 = 27x27
    layer_norm_eps: float = 1e-6
    gelu_tanh: bool = True  # 2.5/2.6 gelu_pytorch_tanh; 2.0 timm nn.GELU (exact erf)
    faithful_idefics2_mask: bool = False  # 2.5: reproduce the official all-True patch mask (spec §4.1)
    position_rule: str = "arange"  # how patch coordinates fall into the table (versions.py)
    # 4.6/4.7: the window-attention merger after layer `insert_layer_id` (16x mode only) folds
    # `window` x `window` patches into one token
    insert_layer_id: int = -1
    window: int = 2

    @property
    def num_positions_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class LLMConfig:
    """Decoder-only LLM: Qwen2 (q/k/v bias), Qwen3 (per-head q/k RMSNorm), Llama-3, or MiniCPM
    (scaled embeddings, residuals, logits)."""

    family: str = "qwen2"
    vocab_size: int = 151666
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    scale_emb: float = 1.0  # MiniCPM: token embeddings are multiplied by this
    scale_depth: float | None = None  # MiniCPM: residual branches scaled by scale_depth / sqrt(L)
    dim_model_base: int | None = None  # MiniCPM: logits = lm_head(h / (hidden / dim_model_base))
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k before RoPE
    explicit_head_dim: int | None = (
        None  # Qwen3's config writes head_dim (then heads * head_dim may differ from hidden)
    )
    # Qwen3.5 (4.6/4.7): each layer mixes tokens with gated full attention or a Gated DeltaNet
    layer_types: tuple[str, ...] = ()  # "full_attention" | "linear_attention"; () = all full
    linear_key_heads: int = 0
    linear_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel: int = 4
    partial_rotary_factor: float = 1.0  # RoPE on the first fraction of each head's dims
    mrope_section: tuple[int, ...] = ()  # 4.7: frequencies for the (T, H, W) rows, interleaved
    num_experts: int = 0  # MoE: routed experts (0: a dense MLP)
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def layer_type(self, index: int) -> str:
        return self.layer_types[index] if self.layer_types else "full_attention"

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_heads

    @property
    def residual_scale(self) -> float:
        return 1.0 if self.scale_depth is None else self.scale_depth / self.num_layers**0.5

    @property
    def logit_divisor(self) -> float:
        return 1.0 if self.dim_model_base is None else self.hidden_size / self.dim_model_base


@dataclass
class MiniCPMVConfig:
    version: str
    vision: VisionConfig
    llm: LLMConfig
    query_num: int = 64
    vision_batch_size: int = 16
    drop_vision_last_layer: bool = False
    downsample_mode: str | None = None  # 4.6/4.7: the checkpoint's default, "16x" or "4x"
    merge_layers: int = 1  # 4.6/4.7 merger_times: 2x2 merges after the tower (the last projects)
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def resampler_heads(self) -> int:
        return self.llm.hidden_size // 128

    @classmethod
    def from_dict(cls, config: dict) -> MiniCPMVConfig:
        version = detect_version(config)
        if facts(version).checkpoint_prefixes:
            return _native_config(config, version)
        drop_last = bool(config.get("drop_vision_last_layer", facts(version).drop_vision_last_layer))
        vision = _vision_config(config, version, drop_last)
        llm = _llm_config(config, version)
        query_num = _int(config, "query_num", facts(version).query_num)
        if llm.hidden_size < 128 or llm.hidden_size % 128:
            raise ConfigError(f"hidden_size: {llm.hidden_size} gives no whole number of 128-wide resampler heads")
        return cls(
            version,
            vision,
            llm,
            query_num,
            _int(config, "vision_batch_size", 16),
            drop_last,
            bos_token_id=config.get("bos_token_id"),
            eos_token_id=config.get("eos_token_id"),
            raw=dict(config),
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> MiniCPMVConfig:
        return cls.from_dict(read_json_object(Path(path) / "config.json", "; not a MiniCPM-V checkpoint folder"))


def _int(config: dict, key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: must be a positive integer, got {value!r}")
    return value


def _vision_config(config: dict, version: str, drop_last: bool) -> VisionConfig:
    if facts(version).vision_tower == "timm":
        # timm's vit_so400m_patch14_siglip_384; the tiny test models spell their timm args out.
        timm = config.get("tiny_vision_encoder_timm_args") or {
            "embed_dim": 1152,
            "depth": 27,
            "num_heads": 16,
            "mlp_ratio": 3.7362,
            "img_size": 384,
            "patch_size": 14,
        }
        width = timm["embed_dim"]
        depth = timm["depth"] - (1 if drop_last else 0)
        return VisionConfig(
            "timm",
            width,
            int(width * timm["mlp_ratio"]),
            depth,
            timm["num_heads"],
            timm.get("patch_size", 14),
            timm.get("img_size", 384),
            1e-6,
            gelu_tanh=False,
        )
    given = config.get("vision_config") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"vision_config: expected an object, got {type(given).__name__}")
    values = {**SO400M, **given}
    layers = _int(values, "num_hidden_layers", 27) - (1 if drop_last else 0)
    return VisionConfig(
        "navit",
        _int(values, "hidden_size", 1152),
        _int(values, "intermediate_size", 4304),
        layers,
        _int(values, "num_attention_heads", 16),
        _int(values, "patch_size", 14),
        _int(values, "image_size", 980),
        float(values.get("layer_norm_eps", 1e-6)),
        gelu_tanh=True,
        faithful_idefics2_mask=facts(version).faithful_idefics2_mask,
    )


def _llm_config(config: dict, version: str) -> LLMConfig:
    family = facts(version).llm_family
    heads = _int(config, "num_attention_heads", 28)
    llm = LLMConfig(
        family=family,
        vocab_size=_int(config, "vocab_size", 151666),
        hidden_size=_int(config, "hidden_size", 3584),
        intermediate_size=_int(config, "intermediate_size", 18944),
        num_layers=_int(config, "num_hidden_layers", 28),
        num_heads=heads,
        num_kv_heads=_int(config, "num_key_value_heads", heads),
        rope_theta=float(
            config.get("rope_theta", {"qwen2": 1e6, "qwen3": 1e6, "qwen3_5": 1e7, "llama": 5e5, "minicpm": 1e4}[family])
        ),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6 if family.startswith("qwen") else 1e-5)),
        max_position_embeddings=_int(config, "max_position_embeddings", 32768),
        attention_bias=family == "qwen2" or bool(config.get("attention_bias", False)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        qk_norm=family in ("qwen3", "qwen3_5"),
        explicit_head_dim=_int(config, "head_dim", 128) if "head_dim" in config else None,
    )
    if family == "minicpm":
        llm.scale_emb = float(config.get("scale_emb", 1))
        llm.scale_depth = float(config.get("scale_depth", 1.4))
        llm.dim_model_base = _int(config, "dim_model_base", 256)
    if (llm.explicit_head_dim is None and llm.hidden_size % heads) or heads % llm.num_kv_heads:
        raise ConfigError(
            f"num_attention_heads: {heads} heads / {llm.num_kv_heads} KV heads do not divide "
            f"hidden_size {llm.hidden_size}"
        )
    if (config.get("rope_scaling") or None) is not None:
        raise ConfigError(f"rope_scaling: {config['rope_scaling']!r} is not supported")
    return llm


def _section(config: dict, key: str) -> dict:
    given = config.get(key) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{key}: expected an object, got {type(given).__name__}")
    return given


def _native_config(config: dict, version: str) -> MiniCPMVConfig:
    """4.6/4.7: transformers' native layout (text_config / vision_config objects)."""
    text, vision_given = _section(config, "text_config"), _section(config, "vision_config")
    rope = _section(text, "rope_parameters")
    llm = _llm_config({**text, "rope_theta": rope.get("rope_theta", 1e7)}, version)
    llm.partial_rotary_factor = float(rope.get("partial_rotary_factor", 1.0))
    llm.mrope_section = tuple(rope.get("mrope_section") or ()) if facts(version).canvas_rope else ()
    llm.layer_types = tuple(text.get("layer_types") or ("full_attention",) * llm.num_layers)
    if len(llm.layer_types) != llm.num_layers or set(llm.layer_types) - {"full_attention", "linear_attention"}:
        raise ConfigError(
            f"text_config.layer_types: {list(llm.layer_types)} does not give {llm.num_layers} known layers"
        )
    for ours, key, default in (  # transformers' Qwen3_5TextConfig defaults
        ("linear_key_heads", "linear_num_key_heads", 16),
        ("linear_value_heads", "linear_num_value_heads", 32),
        ("linear_key_head_dim", "linear_key_head_dim", 128),
        ("linear_value_head_dim", "linear_value_head_dim", 128),
        ("linear_conv_kernel", "linear_conv_kernel_dim", 4),
    ):
        setattr(llm, ours, _int(text, key, default))
    if llm.linear_value_heads % llm.linear_key_heads:
        raise ConfigError("text_config: linear_num_value_heads must be a multiple of linear_num_key_heads")
    if text.get("num_experts"):
        llm.num_experts = _int(text, "num_experts", 1)
        llm.experts_per_token = _int(text, "num_experts_per_tok", 1)
        llm.expert_intermediate_size = _int(text, "moe_intermediate_size", 1)
        llm.shared_expert_intermediate_size = _int(text, "shared_expert_intermediate_size", 1)
    values = {**SO400M, **vision_given}
    vision = VisionConfig(
        "navit",
        _int(values, "hidden_size", 1152),
        _int(values, "intermediate_size", 4304),
        _int(values, "num_hidden_layers", 27),
        _int(values, "num_attention_heads", 16),
        _int(values, "patch_size", 14),
        _int(values, "image_size", 980),
        float(values.get("layer_norm_eps", 1e-6)),
        gelu_tanh=values.get("hidden_act", "gelu_pytorch_tanh") == "gelu_pytorch_tanh",
        position_rule=facts(version).position_rule,
        insert_layer_id=int(config.get("insert_layer_id", values.get("insert_layer_id", -1))),
        window=int((values.get("window_kernel_size") or [2])[0]),
    )
    mode = config.get("downsample_mode", facts(version).downsample_modes[0])
    facts(version).merge_per_side(mode)  # a ConfigError for an unknown mode
    return MiniCPMVConfig(
        version,
        vision,
        llm,
        query_num=0,
        vision_batch_size=_int(config, "vision_batch_size", 16),
        downsample_mode=mode,
        merge_layers=_int(config, "merger_times", 1),
        bos_token_id=text.get("bos_token_id"),
        eos_token_id=text.get("eos_token_id"),
        raw=dict(config),
    )


# config.json fields of the released checkpoints, for building real-size
# architectures without their weights (meta device, benchmarks with random weights).
OFFICIAL_ARCHITECTURES = {
    "2.6": {
        "model_type": "minicpmv",
        "version": 2.6,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 151666,
        "rope_theta": 1e6,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "query_num": 64,
        "drop_vision_last_layer": False,
        "vision_config": dict(SO400M),
    },
    "2.5": {
        "model_type": "minicpmv",
        "version": "2.5",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rope_theta": 5e5,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
        "query_num": 96,
        "drop_vision_last_layer": False,
        "vision_config": dict(SO400M),
    },
    "4.5": {
        "model_type": "minicpmv",
        "version": 4.5,
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151748,
        "rope_theta": 1e6,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 40960,
        "query_num": 64,
        "batch_3d_resampler": True,
        "drop_vision_last_layer": False,
        "vision_config": dict(SO400M),
    },
    "2.0": {
        "model_type": "minicpmv",
        "slice_mode": True,
        "max_slice_nums": 9,
        "scale_resolution": 448,
        "hidden_size": 2304,
        "intermediate_size": 5760,
        "num_hidden_layers": 40,
        "num_attention_heads": 36,
        "num_key_value_heads": 36,
        "vocab_size": 122753,
        "rope_theta": 1e4,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096,
        "query_num": 64,
        "scale_emb": 12,
        "scale_depth": 1.4,
        "dim_model_base": 256,
        "drop_vision_last_layer": True,
        "vision_encoder": "vit_so400m_patch14_siglip_384.webli",
    },
}
# 4.6: SigLIP-so400m with the window merger after layer 6 + Qwen3.5-0.8B (24 layers, three
# DeltaNet layers to one gated-attention layer, tied embeddings); the head counts are
# Qwen3.5-0.8B's (docs/model.md)
OFFICIAL_ARCHITECTURES["4.6"] = {
    "model_type": "minicpmv4_6",
    "insert_layer_id": 6,
    "downsample_mode": "16x",
    "merger_times": 1,
    "tie_word_embeddings": True,
    "vision_config": dict(SO400M, hidden_act="gelu_pytorch_tanh", window_kernel_size=[2, 2]),
    "text_config": {
        "model_type": "qwen3_5_text",
        "hidden_size": 1024,
        "intermediate_size": 3584,
        "num_hidden_layers": 24,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "vocab_size": 248320,
        "layer_types": ["linear_attention"] * 3 + ["full_attention"],
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 16,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_conv_kernel_dim": 4,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_theta": 1e7, "partial_rotary_factor": 0.25, "rope_type": "default"},
    },
}
OFFICIAL_ARCHITECTURES["4.6"]["text_config"]["layer_types"] *= 6
# 4.7 1B: 4.6's tower and Qwen3.5-0.8B text (as third-party ports describe it) with canvas
# M-RoPE and an untied head: 1.301 B + 248320 x 1024 = 1.555 B, the "1.55 B" it is released as
OFFICIAL_ARCHITECTURES["4.7"] = OFFICIAL_ARCHITECTURES["4.6"] | {
    "model_type": "minicpmv4_7",
    "tie_word_embeddings": False,
    "text_config": OFFICIAL_ARCHITECTURES["4.6"]["text_config"]
    | {
        "tie_word_embeddings": False,
        "rope_parameters": {
            "rope_theta": 1e7,
            "partial_rotary_factor": 0.25,
            "rope_type": "default",
            "mrope_interleaved": True,
            "mrope_section": [11, 11, 10],
        },
    },
}

# 1.0: 2.0's shapes (MiniCPM-2.4B, the same timm SigLIP), without the slicing keys
OFFICIAL_ARCHITECTURES["1.0"] = {
    k: v
    for k, v in OFFICIAL_ARCHITECTURES["2.0"].items()
    if k not in ("slice_mode", "max_slice_nums", "scale_resolution")
} | {"max_position_embeddings": 2048}
