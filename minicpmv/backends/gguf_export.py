"""The LLM of a checkpoint as a GGUF file for llama.cpp (the `llamacpp` extra: the `gguf` package).

The file holds the language model and its tokenizer (backends.gguf_tokenizer). It serves two
uses: `--llm-gguf`, where this package keeps the vision parts and feeds llama.cpp the prompt
embeddings (backends.llamacpp), and llama.cpp's own multimodal path, next to the projector file
written by backends.mmproj. 4.6/4.7 (Qwen3.5, llama.cpp's `qwen35`, and `qwen35moe` for 4.7's
MoE: backends.gguf_qwen35), 4.5 (Qwen3), 2.6 (Qwen2) and 2.5 (Llama-3) are supported; llama.cpp
rotates Llama's query/key pairs interleaved where the checkpoint rotates halves, so those rows
are reordered (`interleave_rope_rows`).
Written to a temporary name, then renamed: an interrupted export never leaves a partial file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError
from ..files import staged_path
from ..model.checkpoint import rename, weight_files
from ..model.config import LLMConfig, MiniCPMVConfig
from ..model.safetensors_reader import read_header, read_tensors
from ..versions import facts
from . import gguf_qwen35
from .gguf_tokenizer import write_vocabulary
from .gguf_types import TYPES

# our LLM family -> llama.cpp architecture
ARCHITECTURE = {"qwen2": "qwen2", "qwen3": "qwen3", "llama": "llama", "qwen3_5": "qwen35"}
GGUF_NAMES = {  # checkpoint name -> GGUF name; "{i}" is the layer index
    "llm.model.embed_tokens.weight": "token_embd.weight",
    "llm.model.norm.weight": "output_norm.weight",
    "llm.lm_head.weight": "output.weight",
    "llm.model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "llm.model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "llm.model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "llm.model.layers.{i}.self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
    "llm.model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "llm.model.layers.{i}.self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
    "llm.model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "llm.model.layers.{i}.self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
    "llm.model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "llm.model.layers.{i}.self_attn.q_norm.weight": "blk.{i}.attn_q_norm.weight",  # Qwen3
    "llm.model.layers.{i}.self_attn.k_norm.weight": "blk.{i}.attn_k_norm.weight",
    "llm.model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "llm.model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "llm.model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}
ROWS_PER_BLOCK = 2048  # rows quantized or dequantized at a time
CHECKPOINT_NAMES = {gguf: ours for ours, gguf in GGUF_NAMES.items()}
FAMILY_NAMES = {"qwen3_5": GGUF_NAMES | gguf_qwen35.NAMES}  # where a family's names differ


def _layer_pattern(name: str) -> tuple[str, str | None]:
    """("llm.model.layers.{i}.mlp.up_proj.weight", "3") for a layer tensor, (name, None) otherwise."""
    parts = name.split(".")
    if name.startswith("llm.model.layers."):
        return ".".join(parts[:3] + ["{i}"] + parts[4:]), parts[3]
    if name.startswith("blk."):
        return ".".join(parts[:1] + ["{i}"] + parts[2:]), parts[1]
    return name, None


def gguf_name(name: str, family: str = "qwen2") -> str:
    names = FAMILY_NAMES.get(family, GGUF_NAMES)
    pattern, layer = _layer_pattern(name)
    if pattern not in names:
        raise CheckpointError(f"tensor {name} has no GGUF counterpart")
    return names[pattern].format(i=layer)


def checkpoint_name(name: str) -> str:
    pattern, layer = _layer_pattern(name)
    return CHECKPOINT_NAMES[pattern].format(i=layer)


def interleave_rope_rows(weight: np.ndarray, heads: int, inverse: bool = False) -> np.ndarray:
    """Per head, rows [x1 (first half), x2 (second half)] -> [x1[0], x2[0], x1[1], x2[1], ...]:
    llama.cpp's Llama rotates adjacent pairs, the checkpoint rotates halves."""
    rows, cols = weight.shape
    half = rows // heads // 2
    if inverse:
        return weight.reshape(heads, half, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)
    return weight.reshape(heads, 2, half, cols).transpose(0, 2, 1, 3).reshape(rows, cols)  # (H, half, 2, D)


def architecture(cfg: LLMConfig) -> str | None:
    """The llama.cpp architecture of an LLM (None: none here)."""
    if cfg.family == "qwen3_5" and cfg.num_experts:
        return "qwen35moe"
    return ARCHITECTURE.get(cfg.family)


def llm_config(folder: Path) -> LLMConfig:
    """The LLM config of a float checkpoint this module can export, or a ConfigError saying why not."""
    config = MiniCPMVConfig.from_pretrained(folder)
    if config.llm.family not in ARCHITECTURE:
        raise ConfigError(
            f"{folder}: MiniCPM-V {config.version}'s {config.llm.family} LLM has no llama.cpp export "
            f"here (4.7, 4.6, 4.5, 2.6 and 2.5 do)"
        )
    if config.llm.family == "qwen3_5":
        gguf_qwen35.check_exportable(config.llm)
    if config.raw.get("quantization_config"):
        raise ConfigError(
            f"{folder}: already quantized; export from the original float checkpoint (quantizing twice loses precision)"
        )
    return config.llm


def _write_metadata(writer, cfg: LLMConfig) -> None:
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_head_count(cfg.num_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if cfg.family == "llama":
        writer.add_rope_dimension_count(cfg.head_dim)
    if cfg.explicit_head_dim:  # Qwen3: heads * head_dim need not be the hidden size
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
    if cfg.family == "qwen3_5":
        gguf_qwen35.write_metadata(writer, cfg)


def checkpoint_tensors(folder: Path, prefixes: tuple[str, ...] = ("llm.",)):
    """(name in the package's tree, float32 numpy array) of every tensor of the given parts, one
    at a time; a version whose official names differ (4.6/4.7) is renamed on the way."""
    renames = facts(MiniCPMVConfig.from_pretrained(folder).version).checkpoint_prefixes
    by_file: dict[Path, dict[str, str]] = {}
    for name, file in weight_files(folder).items():
        ours = rename(name, renames, to_official=False)
        if ours.startswith(prefixes):
            by_file.setdefault(file, {})[name] = ours
    for file, names in sorted(by_file.items()):
        header, start = read_header(file)
        for name, tensor in read_tensors(file, list(names), header, start):
            yield names[name], tensor.to(torch.float32).numpy()


def quantize_rows(data: np.ndarray, kind) -> np.ndarray:
    """gguf.quants.quantize over blocks of rows (blocks never cross rows): its numpy temporaries
    stay a few times one block instead of a few times the tensor (the 2.2 GB float32 embedding)."""
    from gguf.quants import quant_shape_to_byte_shape, quantize

    if kind.name in ("F32", "F16"):  # a cast, no blocks
        return quantize(data, kind)
    out = np.empty(quant_shape_to_byte_shape(data.shape, kind), dtype=np.uint8)
    for start in range(0, data.shape[0], ROWS_PER_BLOCK):
        out[start : start + ROWS_PER_BLOCK] = quantize(data[start : start + ROWS_PER_BLOCK], kind)
    return out


def _quantized(name: str, data: np.ndarray, kind, weight_type: str) -> np.ndarray:
    import gguf

    block = gguf.GGML_QUANT_SIZES[kind][0]
    if data.shape[1] % block:
        raise ConfigError(
            f"tensor {name}: {data.shape[1]} columns are not a multiple of {weight_type}'s block of {block}"
        )
    return quantize_rows(data, kind)


def export_gguf(folder: str | Path, output: str | Path, weight_type: str = "q4_0") -> Path:
    """Write the LLM of a float 4.7 / 4.6 / 4.5 / 2.6 / 2.5 checkpoint folder as a GGUF (see write_gguf)."""
    folder = Path(folder)
    tokenizer = folder if (folder / "tokenizer.json").exists() else None
    return write_gguf(checkpoint_tensors(folder), llm_config(folder), output, weight_type, tokenizer)


def write_gguf(
    tensors, cfg: LLMConfig, output: str | Path, weight_type: str = "q4_0", tokenizer_folder: Path | None = None
) -> Path:
    """(checkpoint name, float32 array) pairs of an LLM -> a GGUF: decoder linears in `weight_type`
    (q4_0, q8_0, f16, f32), embeddings and head per TYPES, norms and biases in float32; the
    tokenizer of `tokenizer_folder` (tokenizer.json, tokenizer_config.json), else placeholders."""
    import gguf

    output = Path(output)
    if weight_type not in TYPES:
        raise ConfigError(f"weight type {weight_type!r} is not one of {', '.join(TYPES)}")
    linear_type, outer_type = (gguf.GGMLQuantizationType[t] for t in TYPES[weight_type])
    stacks = gguf_qwen35.ExpertStacks(cfg.num_experts) if cfg.num_experts else None
    with staged_path(output) as tmp:
        # use_temp_file: each tensor goes to disk when added, not all of them kept for the end
        writer = gguf.GGUFWriter(str(tmp), architecture(cfg), use_temp_file=True)
        _write_metadata(writer, cfg)
        write_vocabulary(writer, cfg.vocab_size, cfg.family, tokenizer_folder)
        for name, data in tensors:
            keep_float = False
            if cfg.family == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
                data = interleave_rope_rows(data, cfg.num_heads if "q_proj" in name else cfg.num_kv_heads)
            if cfg.family == "qwen3_5":
                data, keep_float = gguf_qwen35.convert(name, data)
            kind = None if data.ndim != 2 or keep_float else linear_type if ".layers." in name else outer_type
            if kind is not None:
                data = _quantized(name, data, kind, weight_type)
            if stacks is not None and stacks.takes(name):  # one expert: written with its layer's others
                stacked = stacks.add(name, data)
                if stacked is None:
                    continue
                target, data = stacked
            else:
                target = gguf_name(name, cfg.family)
            writer.add_tensor(target, data, raw_dtype=kind)
        if stacks is not None:
            stacks.finish()
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return output
