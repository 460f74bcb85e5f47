"""What a Qwen3.5 LLM (MiniCPM-V 4.6/4.7) needs to become llama.cpp's `qwen35` GGUF, or
`qwen35moe` for 4.7's mixture-of-experts variant.

llama.cpp's graph differs from the checkpoint in a few stored forms, fixed here on the way out:
- its RMSNorm multiplies by the weight, where Qwen3.5's zero-centred norm multiplies by (1 + w),
  so every such norm is written as 1 + w; the DeltaNet's gated norm is a plain one and stays;
- it stores the decay rate A = -exp(A_log), not A_log;
- the depthwise conv kernel is (channels, K), without the checkpoint's middle axis of 1.
The query projection keeps its per-head [query, gate] interleave: llama.cpp splits it the same way.
A MoE layer's routed experts, one tensor each in the checkpoint, are one (experts, rows, columns)
tensor per projection there (ExpertStacks); the router and the shared expert's gate stay float32.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import CheckpointError, ConfigError
from ..model.config import LLMConfig

LAYER = "llm.model.layers.{i}."
NAMES = {  # checkpoint name -> GGUF name, on top of gguf_export.GGUF_NAMES
    LAYER + "post_attention_layernorm.weight": "blk.{i}.post_attention_norm.weight",
    LAYER + "linear_attn.in_proj_qkv.weight": "blk.{i}.attn_qkv.weight",
    LAYER + "linear_attn.in_proj_z.weight": "blk.{i}.attn_gate.weight",
    LAYER + "linear_attn.in_proj_b.weight": "blk.{i}.ssm_beta.weight",
    LAYER + "linear_attn.in_proj_a.weight": "blk.{i}.ssm_alpha.weight",
    LAYER + "linear_attn.conv1d.weight": "blk.{i}.ssm_conv1d.weight",
    LAYER + "linear_attn.dt_bias": "blk.{i}.ssm_dt.bias",
    LAYER + "linear_attn.A_log": "blk.{i}.ssm_a",
    LAYER + "linear_attn.norm.weight": "blk.{i}.ssm_norm.weight",
    LAYER + "linear_attn.out_proj.weight": "blk.{i}.ssm_out.weight",
    LAYER + "mlp.gate.weight": "blk.{i}.ffn_gate_inp.weight",  # MoE: the router
    LAYER + "mlp.shared_expert_gate.weight": "blk.{i}.ffn_gate_inp_shexp.weight",
    LAYER + "mlp.shared_expert.gate_proj.weight": "blk.{i}.ffn_gate_shexp.weight",
    LAYER + "mlp.shared_expert.up_proj.weight": "blk.{i}.ffn_up_shexp.weight",
    LAYER + "mlp.shared_expert.down_proj.weight": "blk.{i}.ffn_down_shexp.weight",
}
EXPERT = re.compile(r"llm\.model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight")
ZERO_CENTRED = ("input_layernorm.weight", "post_attention_layernorm.weight", "q_norm.weight", "k_norm.weight")
# kept in float32 whatever the weight type: the conv kernel's rows are K=4 wide (no quant block
# fits), the per-head decay/beta projections are a few rows that set every state update, and a
# MoE's router and shared-expert gate pick and weigh the experts (float in our quantization too)
FLOAT_ONLY = (
    "linear_attn.conv1d.weight",
    "linear_attn.in_proj_a.weight",
    "linear_attn.in_proj_b.weight",
    "mlp.gate.weight",
    "mlp.shared_expert_gate.weight",
)


def check_exportable(cfg: LLMConfig) -> None:
    """A ConfigError for what this export does not write: DeltaNet value heads grouped over fewer
    key heads (llama.cpp's converter reorders those heads; not done here)."""
    if cfg.linear_value_heads != cfg.linear_key_heads:
        raise ConfigError(
            f"DeltaNet with {cfg.linear_value_heads} value heads over {cfg.linear_key_heads} key heads "
            "has no llama.cpp export here (equal head counts do)"
        )


def full_attention_interval(cfg: LLMConfig) -> int:
    """llama.cpp marks layer i as full attention when (i + 1) % interval == 0: the checkpoint's
    layer_types must be exactly that pattern."""
    kinds = [cfg.layer_type(i) for i in range(cfg.num_layers)]
    interval = kinds.index("full_attention") + 1 if "full_attention" in kinds else 0
    expected = [
        "full_attention" if interval and (i + 1) % interval == 0 else "linear_attention" for i in range(cfg.num_layers)
    ]
    if not interval or kinds != expected:
        raise ConfigError(f"layer_types {kinds} are not llama.cpp's every-n-th full attention pattern")
    return interval


def write_metadata(writer, cfg: LLMConfig) -> None:
    """The qwen35 keys beyond the common ones (gguf_export writes those)."""
    arch = writer.arch
    pairs = cfg.rotary_dim // 2
    # 4.6 has no sections; a text token's position is equal on the T, H and W rows, so any split
    # serves as long as every pair lands on one of them (llama.cpp gives a 4th row position 0):
    # pair i goes to row i % 3, as with the interleaved sections of 4.7 ([11, 11, 10] of 32 pairs)
    sections = list(cfg.mrope_section) if cfg.mrope_section else [-(-(pairs - k) // 3) for k in range(3)]
    writer.add_rope_dimension_count(cfg.rotary_dim)
    writer.add_array(f"{arch}.rope.dimension_sections", (sections + [0, 0, 0, 0])[:4])
    writer.add_uint32(f"{arch}.full_attention_interval", full_attention_interval(cfg))
    writer.add_uint32(f"{arch}.ssm.conv_kernel", cfg.linear_conv_kernel)
    writer.add_uint32(f"{arch}.ssm.inner_size", cfg.linear_value_heads * cfg.linear_value_head_dim)
    writer.add_uint32(f"{arch}.ssm.state_size", cfg.linear_key_head_dim)
    writer.add_uint32(f"{arch}.ssm.time_step_rank", cfg.linear_value_heads)
    writer.add_uint32(f"{arch}.ssm.group_count", cfg.linear_key_heads)
    if cfg.num_experts:
        writer.add_expert_count(cfg.num_experts)
        writer.add_expert_used_count(cfg.experts_per_token)
        writer.add_expert_feed_forward_length(cfg.expert_intermediate_size)
        writer.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)


def convert(name: str, data: np.ndarray) -> tuple[np.ndarray, bool]:
    """A checkpoint tensor in llama.cpp's stored form, and whether it must stay float32."""
    if name.endswith(ZERO_CENTRED) or name == "llm.model.norm.weight":
        return data + 1.0, True
    if name.endswith("linear_attn.A_log"):
        return -np.exp(data), True
    if name.endswith("linear_attn.conv1d.weight"):
        return data[:, 0, :], True  # (C, 1, K) -> (C, K)
    if name.endswith("mlp.shared_expert_gate.weight"):
        return data[0], True  # (1, D) -> llama.cpp's (D,)
    return data, name.endswith(FLOAT_ONLY)


class ExpertStacks:
    """A MoE layer's routed experts as llama.cpp's (experts, rows, columns) tensors: each
    expert's projection is held, already in its stored type, until the layer's last expert of that
    projection arrives (in file order that is within the layer: one layer's experts held at most)."""

    def __init__(self, experts: int):
        self.experts, self.pending = experts, {}

    @staticmethod
    def takes(name: str) -> bool:
        return EXPERT.fullmatch(name) is not None

    def add(self, name: str, data: np.ndarray) -> tuple[str, np.ndarray] | None:
        """(GGUF name, stacked tensor) once the group `name` completes, else None."""
        layer, expert, projection = EXPERT.fullmatch(name).groups()
        group = self.pending.setdefault((int(layer), projection), {})
        group[int(expert)] = data
        if len(group) < self.experts:
            return None
        del self.pending[int(layer), projection]
        return f"blk.{layer}.ffn_{projection}_exps.weight", np.stack([group[e] for e in range(self.experts)])

    def finish(self) -> None:
        """A CheckpointError for a layer whose experts the checkpoint does not all hold."""
        for (layer, projection), group in sorted(self.pending.items()):
            raise CheckpointError(
                f"layer {layer}: {len(group)} of {self.experts} experts' {projection}_proj in the checkpoint"
            )
