"""The vision half of a checkpoint (SigLIP tower + resampler) as llama.cpp's MiniCPM-V projector
GGUF, the "mmproj" file that llama.cpp's multimodal path (mtmd: llama-mtmd-cli, llama-server,
llama-cpp-python's MiniCPMv26ChatHandler, ollama) loads next to the LLM GGUF; and back.

The layout is the one llama.cpp's own converter writes (its legacy-models/minicpmv-convert-image-
encoder-to-gguf.py): `clip.*` keys, `v.blk.N.*` tower tensors, the resampler's fused attention
input split into q / k / v, its output projection transposed (the checkpoint multiplies x @ proj,
ggml multiplies by weight rows), and a 70x70 sin-cos key table that llama.cpp loads although it
recomputes the table per image. llama.cpp's attention in the resampler assumes 128-wide heads, as
every MiniCPM-V checkpoint has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..model.config import MiniCPMVConfig
from ..model.positions import sincos_2d
from ..processing.config import ProcessorConfig
from ..versions import VERSIONS, facts

# checkpoint prefix -> llama.cpp prefix, each with .weight and .bias; "{i}" is the vision layer.
# llama.cpp's converter calls fc1 "ffn_down" and fc2 "ffn_up" (its loader swaps them back by
# their shapes); files are written the same way, so that llama.cpp builds of any age read them.
PAIRS = {
    "vpm.embeddings.patch_embedding": "v.patch_embd",
    "vpm.encoder.layers.{i}.self_attn.q_proj": "v.blk.{i}.attn_q",
    "vpm.encoder.layers.{i}.self_attn.k_proj": "v.blk.{i}.attn_k",
    "vpm.encoder.layers.{i}.self_attn.v_proj": "v.blk.{i}.attn_v",
    "vpm.encoder.layers.{i}.self_attn.out_proj": "v.blk.{i}.attn_out",
    "vpm.encoder.layers.{i}.layer_norm1": "v.blk.{i}.ln1",
    "vpm.encoder.layers.{i}.layer_norm2": "v.blk.{i}.ln2",
    "vpm.encoder.layers.{i}.mlp.fc1": "v.blk.{i}.ffn_down",
    "vpm.encoder.layers.{i}.mlp.fc2": "v.blk.{i}.ffn_up",
    "vpm.post_layernorm": "v.post_ln",
    "resampler.attn.out_proj": "resampler.attn.out",
    "resampler.ln_q": "resampler.ln_q",
    "resampler.ln_kv": "resampler.ln_kv",
    "resampler.ln_post": "resampler.ln_post",
}
NAMES = {f"{ours}.{end}": f"{theirs}.{end}" for ours, theirs in PAIRS.items() for end in ("weight", "bias")}
NAMES |= {
    "vpm.embeddings.position_embedding.weight": "v.position_embd.weight",
    "resampler.query": "resampler.query",
    "resampler.kv_proj.weight": "resampler.kv.weight",
}
BACK = {theirs: ours for ours, theirs in NAMES.items()}
KEY_TABLE_SIDE = 70  # the converter's resampler.pos_embed_k: a 70x70 grid


def _layer_split(name: str) -> tuple[str, str | None]:
    """("vpm.encoder.layers.{i}.mlp.fc1.weight", "3") for a tower layer tensor, else (name, None)."""
    parts = name.split(".")
    for prefix in (["vpm", "encoder", "layers"], ["v", "blk"]):
        if parts[: len(prefix)] == prefix and len(parts) > len(prefix):
            at = len(prefix)
            return ".".join(parts[:at] + ["{i}"] + parts[at + 1 :]), parts[at]
    return name, None


def projector_tensors(tensors, config: MiniCPMVConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array) of the vision parts among (checkpoint name, array) pairs;
    a dropped last tower layer (drop_vision_last_layer) is left out, as the model never runs it."""
    for name, data in tensors:
        pattern, layer = _layer_split(name)
        if layer is not None and int(layer) >= config.vision.num_layers:
            continue
        if name == "resampler.attn.in_proj_weight" or name == "resampler.attn.in_proj_bias":
            end = name.rsplit("_", 1)[1]
            for part, chunk in zip("qkv", np.split(data, 3, axis=0)):
                yield f"resampler.attn.{part}.{end}", chunk
        elif name == "resampler.proj":
            yield "resampler.proj.weight", np.ascontiguousarray(data.T)
            yield "resampler.pos_embed_k", sincos_2d(data.shape[0], KEY_TABLE_SIDE, KEY_TABLE_SIDE).numpy()
        elif pattern in NAMES:
            yield NAMES[pattern].format(i=layer), data


def checkpoint_tensors(tensors, hidden: int) -> Iterator[tuple[str, np.ndarray]]:
    """The inverse of projector_tensors over (llama.cpp name, array) pairs of a projector GGUF
    whose tower is `hidden` wide."""
    attention: dict[str, np.ndarray] = {}
    for name, data in tensors:
        pattern, layer = _layer_split(name)
        if name.startswith("resampler.attn.") and name.split(".")[2] in "qkv":
            attention[name] = data
        elif name == "resampler.proj.weight":
            yield "resampler.proj", np.ascontiguousarray(data.T)
        elif name == "resampler.pos_embed_k":
            continue  # recomputed per image by the resampler
        elif pattern.endswith(("ffn_down.weight", "ffn_up.weight", "ffn_down.bias", "ffn_up.bias")):
            yield _ffn_name(pattern, data, layer, hidden), data
        elif pattern in BACK:
            yield BACK[pattern].format(i=layer), data
        else:
            raise ConfigError(f"projector tensor {name} is not part of a MiniCPM-V projector")
    for end in ("weight", "bias"):
        parts = [attention.get(f"resampler.attn.{p}.{end}") for p in "qkv"]
        if any(part is None for part in parts):
            raise ConfigError(f"projector: resampler.attn.q/k/v.{end} missing")
        yield f"resampler.attn.in_proj_{end}", np.concatenate(parts, axis=0)


def _ffn_name(pattern: str, data: np.ndarray, layer: str, hidden: int) -> str:
    """fc1 (out: the feed-forward width) or fc2 (out: the tower width), told by the output size,
    since files name them either way round."""
    fc = "fc2" if data.shape[0] == hidden else "fc1"
    return f"vpm.encoder.layers.{layer}.mlp.{fc}.{pattern.rsplit('.', 1)[1]}"


def write_metadata(writer, config: MiniCPMVConfig, processor: ProcessorConfig, float_type: int) -> None:
    """The `clip.*` keys llama.cpp reads for a MiniCPM-V projector."""
    version = facts(config.version).llamacpp_version
    if version is None:
        supported = ", ".join(v for v, row in VERSIONS.items() if row.llamacpp_version)
        raise ConfigError(f"MiniCPM-V {config.version} has no llama.cpp projector (llama.cpp runs {supported})")
    vision = config.vision
    writer.add_bool("clip.has_text_encoder", False)
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_minicpmv_projector", True)
    writer.add_file_type(float_type)
    writer.add_description("image encoder for MiniCPM-V")
    writer.add_string("clip.projector_type", "resampler")
    writer.add_int32("clip.minicpmv_version", version)
    writer.add_uint32("clip.vision.image_size", processor.scale_resolution)  # the slice size
    writer.add_uint32("clip.vision.patch_size", vision.patch_size)
    writer.add_uint32("clip.vision.embedding_length", vision.hidden_size)
    writer.add_uint32("clip.vision.feed_forward_length", vision.intermediate_size)
    writer.add_uint32("clip.vision.projection_dim", 0)
    writer.add_uint32("clip.vision.attention.head_count", vision.num_heads)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", vision.layer_norm_eps)
    writer.add_uint32("clip.vision.block_count", vision.num_layers)
    writer.add_uint32("clip.minicpmv_query_num", config.query_num)
    writer.add_array("clip.vision.image_mean", list(processor.norm_mean))
    writer.add_array("clip.vision.image_std", list(processor.norm_std))
    writer.add_bool("clip.use_gelu", True)  # gelu_pytorch_tanh, ggml's gelu


def export_mmproj(folder: Path, output: str | Path, weight_type: str = "f16") -> Path:
    """Write the projector GGUF of a float checkpoint folder: tower and resampler matrices in
    `weight_type` (f16, llama.cpp's usual, or f32), norms, biases and tables in float32."""
    import gguf

    from ..files import staged_path
    from .gguf_export import checkpoint_tensors

    folder, output = Path(folder), Path(output)
    if weight_type not in ("f16", "f32"):
        raise ConfigError(f"projector weight type {weight_type!r}: f16 or f32")
    config = MiniCPMVConfig.from_pretrained(folder)
    processor = ProcessorConfig.from_pretrained(folder)
    half = weight_type == "f16"
    with staged_path(output) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "clip", use_temp_file=True)
        write_metadata(writer, config, processor, int(half))
        for name, data in projector_tensors(checkpoint_tensors(folder, ("vpm.", "resampler.")), config):
            matrix = name.endswith(".weight") and data.ndim >= 2
            writer.add_tensor(name, data.astype(np.float16) if half and matrix else data)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return output
