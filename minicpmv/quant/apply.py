"""Which linears of a MiniCPM-V model are quantized, and swapping them in.

The choice is a pure function of the scheme and the layer shapes, so a saved folder only needs
its `quantization_config` (in config.json) for the loader to rebuild the same layout:
- the LLM's attention and MLP projections: `bits` (4, 8, or 16 for bfloat16 weights with float32
  arithmetic: lossless for the official bfloat16 checkpoints);
- `llm.lm_head`: int8 (it decides every token; llama.cpp keeps it at higher precision too), or
  bfloat16 with bits=16, or int4 when asked (`lm_head_bits=4`: 0.1 GB less read per token on
  Qwen2-1.5B; int8 where the group size does not divide its width); a head tied to the
  embeddings (4.6/4.7) gets a quantized copy of its own (the embedding table stays float for
  lookups): decoding reads a quarter of the bytes;
- with `vision_bits=8`: the vision tower's linears and the resampler's `kv_proj`;
- an int4 layer whose input width the group size does not divide stays int8.
Embeddings, norms, the resampler's attention and a mixture-of-experts router (which picks the
experts: a small layer whose errors move whole tokens to other experts; llama.cpp keeps it too)
stay in floating point.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..memory import huge_page_empty
from .decode_step import install as install_native_decode
from .linear import Bf16Linear, Int4Linear, Int8Linear
from .moe import group_experts
from .schemes import GROUP_SIZES, quantize_int4, quantize_int8
from .swiglu import fuse_swiglu

METHOD = "minicpmv-weight-only"
ROUTERS = (".mlp.gate", ".mlp.shared_expert_gate")  # 4.7 MoE: kept in floating point


@dataclass(frozen=True)
class QuantConfig:
    bits: int = 4
    group_size: int = 64
    vision_bits: int | None = None
    lm_head_bits: int | None = None  # None: 16 with bits=16, else 8; 4 on request
    quant_method: str = METHOD

    def __post_init__(self):
        if self.bits not in (4, 8, 16):
            raise ConfigError(f"quantization_config.bits: {self.bits} is not 4, 8 or 16")
        if self.lm_head_bits is None:
            object.__setattr__(self, "lm_head_bits", 16 if self.bits == 16 else 8)
        if self.group_size not in GROUP_SIZES:
            raise ConfigError(f"quantization_config.group_size: {self.group_size} is not one of {GROUP_SIZES}")
        if self.vision_bits not in (None, 8) or self.lm_head_bits not in (4, 8, 16):
            raise ConfigError("quantization_config: vision_bits must be null or 8, lm_head_bits 4, 8 or 16")
        if self.quant_method != METHOD:
            raise ConfigError(f"quantization_config.quant_method: {self.quant_method!r} is not {METHOD!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QuantConfig:
        known = {k: data[k] for k in ("bits", "group_size", "vision_bits", "lm_head_bits", "quant_method") if k in data}
        return cls(**known)


def layer_bits(model: nn.Module, config: QuantConfig) -> dict[str, int]:
    """Name -> bits of every linear to quantize."""
    plan = {}
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:  # MultiheadAttention's out_proj is a subclass: kept
            continue
        if name.startswith("llm.model.layers.") and name.endswith(ROUTERS):
            continue
        if name.startswith("llm.model.layers."):
            bits = config.bits
        elif name == "llm.lm_head":
            tied = module.weight is model.llm.model.embed_tokens.weight
            if tied and config.lm_head_bits == 16:  # a bfloat16 copy would only add memory
                continue
            bits = config.lm_head_bits
        elif config.vision_bits and (name.startswith("vpm.") or name == "resampler.kv_proj"):
            bits = config.vision_bits
        else:
            continue
        if bits == 4 and module.in_features % config.group_size:
            bits = 8
        plan[name] = bits
    return plan


def _empty(module: nn.Linear, bits: int, group_size: int) -> nn.Module:
    has_bias = module.bias is not None
    if bits == 16:
        return Bf16Linear(module.in_features, module.out_features, has_bias)
    if bits == 8:
        return Int8Linear(module.in_features, module.out_features, has_bias)
    return Int4Linear(module.in_features, module.out_features, has_bias, group_size)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def prepare_quantized_layout(model: nn.Module, config: QuantConfig) -> None:
    """Swap the chosen linears for empty quantized ones (on whatever device the model is, meta too)."""
    for name, bits in layer_bits(model, config).items():
        module = model.get_submodule(name)
        with torch.device(module.weight.device):
            _replace(model, name, _empty(module, bits, config.group_size))
    install_native_decode(model.llm)
    fuse_swiglu(model.llm)
    group_experts(model.llm)


ROWS_PER_STEP = 256  # rows quantized at once: float32 temporaries of a few MB for any weight


@torch.no_grad()
def quantize_weight(
    weight: torch.Tensor, bits: int, group_size: int, rows_per_step: int = ROWS_PER_STEP, streamed: bool = False
) -> dict[str, torch.Tensor]:
    """A float (N, K) weight in a quantized linear's layout: {"weight"} in bfloat16 (bits 16),
    {"qweight", "scales"} (8) or {"qweight", "scales", "zeros"} with float16 statistics (4);
    `streamed`: for a layer that will decode here, in huge pages (memory.huge_page_empty), not for
    a file.

    Per-row scales (int8) and groups within a row (int4): row blocks quantize independently, so
    a 150k-row head never needs whole-weight float32 temporaries; each block's results go straight
    into the final tensors (no list of pieces, no concatenated copy)."""
    empty = huge_page_empty if streamed else torch.empty
    if bits == 16:
        return {"weight": empty(tuple(weight.shape), dtype=torch.bfloat16).copy_(weight.detach())}
    rows, cols = weight.shape
    if bits == 8:
        out = {"qweight": empty((rows, cols), dtype=torch.int8), "scales": torch.empty(rows)}
    else:
        groups = cols // group_size
        out = {
            "qweight": empty((rows, cols // 2), dtype=torch.uint8),
            "scales": empty((rows, groups), dtype=torch.float16),
            "zeros": empty((rows, groups), dtype=torch.float16),
        }
    for start in range(0, rows, rows_per_step):
        block = weight[start : start + rows_per_step].float()
        pieces = quantize_int8(block) if bits == 8 else quantize_int4(block, group_size)
        for target, piece in zip(out.values(), pieces):
            target[start : start + len(block)] = piece
    return out


@torch.no_grad()
def quantize_model(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Quantize a loaded float model in place and record the scheme in its config."""
    for name, bits in layer_bits(model, config).items():
        module = model.get_submodule(name)
        new = _empty(module, bits, config.group_size)
        on_cpu = module.weight.device.type == "cpu"  # what decodes here: on a GPU it moves there
        for suffix, tensor in quantize_weight(module.weight, bits, config.group_size, streamed=on_cpu).items():
            setattr(new, suffix, tensor)
        if module.bias is not None:
            new.bias = module.bias.detach().float().clone()
        _replace(model, name, new.to(module.weight.device))
    model.config.raw["quantization_config"] = config.to_dict()
    install_native_decode(model.llm)
    fuse_swiglu(model.llm)
    group_experts(model.llm)
    return model
