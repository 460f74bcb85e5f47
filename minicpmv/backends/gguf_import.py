"""A llama.cpp GGUF pair (the LLM file and its MiniCPM-V projector "mmproj" file, as llama.cpp,
ollama and openbmb's -gguf repositories distribute them) as a checkpoint folder this package loads.

Converted once into the cache (`minicpmv.files.cache_dir()/converted`), then reused: config.json
from the two files' metadata, weights through the `gguf` package's readers and dequantizers
(float32 and float16 tensors kept as they are, quantized ones as bfloat16), the tokenizer rebuilt
from the GGUF vocabulary (backends.gguf_tokenizer). The folder is an ordinary official-layout
checkpoint, so everything else (quantize, serve, eval) works on it unchanged.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..files import cache_dir, staged_folder, write_text_atomic
from ..versions import VERSIONS, facts
from .gguf_export import ARCHITECTURE, ROWS_PER_BLOCK, checkpoint_name, interleave_rope_rows
from .gguf_tokenizer import field_value, tokenizer_files
from .mmproj import checkpoint_tensors

FAMILY = {arch: family for family, arch in ARCHITECTURE.items()}  # llama.cpp architecture -> our LLM family
KEPT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}  # else dequantized to bfloat16


def _reader(path: Path, role: str):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ConfigError("reading GGUF files needs the gguf package: pip install 'minicpmv[llamacpp]'") from None

    if not path.is_file():
        raise ConfigError(f"{path}: no such {role} GGUF file")
    try:
        return GGUFReader(str(path))
    except (ValueError, KeyError, IndexError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable GGUF file ({exc})") from None


def find_mmproj(model: Path) -> Path:
    """The projector next to an LLM GGUF when none is named: the one GGUF in its folder with
    "mmproj" in its name (llama.cpp's mmproj-model-f16.gguf, other repositories' *-mmproj-*.gguf)."""
    found = sorted(p for p in model.parent.glob("*.gguf") if "mmproj" in p.name.lower() and p != model)
    if len(found) != 1:
        where = "none" if not found else ", ".join(p.name for p in found)
        raise ConfigError(
            f"{model}: a GGUF model needs its vision projector: --mmproj FILE (*mmproj*.gguf beside it: {where})"
        )
    return found[0]


def gguf_folder(model: str | Path, mmproj: str | Path | None = None) -> Path:
    """The converted checkpoint folder of a GGUF pair, made on first use (see the module docstring)."""
    model = Path(model)
    if not model.is_file():
        raise ConfigError(f"{model}: no such GGUF file")
    mmproj = Path(mmproj) if mmproj is not None else find_mmproj(model)
    stamp = [f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (model, mmproj) if p.is_file()]
    key = hashlib.sha1("\n".join(stamp).encode()).hexdigest()[:16]
    target = cache_dir() / "converted" / f"{model.stem}-{key}"
    if not (target / "config.json").exists():
        llm, vision = _reader(model, "model"), _reader(mmproj, "projector")
        config = checkpoint_config(llm, vision, model, mmproj)
        print(f"minicpmv: converting {model.name} + {mmproj.name} once, into {target}", file=sys.stderr)
        target.parent.mkdir(parents=True, exist_ok=True)
        with staged_folder(target) as stage:
            _write_folder(stage, llm, vision, config)
    return target


def _number(reader, key: str, default=None):
    value = field_value(reader, key, default)
    if value is None:
        raise ConfigError(f"GGUF key {key} missing")
    return value


def checkpoint_config(llm, vision, model: Path, mmproj: Path) -> dict:
    """config.json contents of the pair, or ConfigError naming why they are not a MiniCPM-V pair."""
    if field_value(vision, "clip.projector_type") != "resampler":
        raise ConfigError(f"{mmproj}: not a MiniCPM-V projector (clip.projector_type is not 'resampler')")
    number = field_value(vision, "clip.minicpmv_version")
    version = next((v for v, row in VERSIONS.items() if row.llamacpp_version == number), None)
    if version is None:
        raise ConfigError(f"{mmproj}: llama.cpp's MiniCPM-V version {number} is not one this package runs")
    arch = field_value(llm, "general.architecture")
    if FAMILY.get(arch) != facts(version).llm_family:
        raise ConfigError(f"{model}: a {arch} LLM, but MiniCPM-V {version}'s LLM is {facts(version).llm_family}")

    def llm_key(key, default=None):
        return _number(llm, f"{arch}.{key}", default)

    hidden, heads = llm_key("embedding_length"), llm_key("attention.head_count")
    tensors = {t.name: t for t in vision.tensors}
    width = int(tensors["resampler.proj.weight"].shape[1]) if "resampler.proj.weight" in tensors else None
    if width != hidden:
        raise ConfigError(f"{mmproj}: projects to {width} wide features, but {model.name}'s LLM is {hidden} wide")
    positions = int(tensors["v.position_embd.weight"].shape[-1])
    patch = _number(vision, "clip.vision.patch_size")
    config = {
        "architectures": ["MiniCPMV"],
        "model_type": "minicpmv",
        "version": float(version),
        "hidden_size": hidden,
        "intermediate_size": llm_key("feed_forward_length"),
        "num_hidden_layers": llm_key("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": llm_key("attention.head_count_kv", heads),
        "rope_theta": float(llm_key("rope.freq_base", 1e6)),
        "rms_norm_eps": float(llm_key("attention.layer_norm_rms_epsilon", 1e-6)),
        "max_position_embeddings": llm_key("context_length"),
        "vocab_size": len(_number(llm, "tokenizer.ggml.tokens")),
        "query_num": _number(vision, "clip.minicpmv_query_num"),
        "image_size": _number(vision, "clip.vision.image_size"),
        "patch_size": patch,
        "drop_vision_last_layer": False,  # the file holds the layers that run
        "tie_word_embeddings": False,
        "vision_config": {
            "hidden_size": _number(vision, "clip.vision.embedding_length"),
            "intermediate_size": _number(vision, "clip.vision.feed_forward_length"),
            "num_hidden_layers": _number(vision, "clip.vision.block_count"),
            "num_attention_heads": _number(vision, "clip.vision.attention.head_count"),
            "layer_norm_eps": float(_number(vision, "clip.vision.attention.layer_norm_epsilon", 1e-6)),
            "patch_size": patch,
            "image_size": round(positions**0.5) * patch,  # the position table's side, in pixels
        },
    }
    key_length = field_value(llm, f"{arch}.attention.key_length")
    if key_length is not None and key_length * heads != hidden:
        config["head_dim"] = key_length  # Qwen3: heads * head_dim need not be the hidden size
    return config


def _tensor(reader, tensor) -> torch.Tensor:
    """A GGUF tensor in the checkpoint's axis order: float32 and float16 as stored, quantized
    types dequantized to bfloat16. Read from the file a block of rows at a time (not through the reader's map of the whole
    file, whose touched pages would all count as this process's memory) and dequantized per
    block into the kept dtype, so a quantized 2 GB embedding never exists in float32."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    kind = GGMLQuantizationType(tensor.tensor_type)
    shape = [int(d) for d in reversed(tensor.shape)]  # (rows..., columns)
    columns, rows = shape[-1], int(np.prod(shape[:-1], dtype=np.int64))
    block, block_bytes = GGML_QUANT_SIZES[kind]
    row_bytes = columns // block * block_bytes
    keep = KEPT.get(kind.name, torch.bfloat16)
    out = torch.empty((rows, columns), dtype=keep)
    with open(reader.data.filename, "rb") as file:
        file.seek(tensor.data_offset)
        for start in range(0, rows, ROWS_PER_BLOCK):
            count = min(ROWS_PER_BLOCK, rows - start)
            raw = np.frombuffer(file.read(count * row_bytes), dtype=np.uint8).reshape(count, row_bytes)
            if kind.name in ("F32", "F16"):
                values = raw.view(np.float32 if kind.name == "F32" else np.float16)
            else:
                values = dequantize(raw, kind)
            out[start : start + count] = torch.from_numpy(np.array(values))
    return out.reshape(shape)


def _llm_tensors(llm, config: dict):
    has_head = any(t.name == "output.weight" for t in llm.tensors)
    rotated_halves = facts(str(config["version"])).llm_family == "llama"  # see interleave_rope_rows
    for tensor in llm.tensors:
        data = _tensor(llm, tensor)
        try:
            name = checkpoint_name(tensor.name)
        except KeyError:
            raise ConfigError(f"LLM tensor {tensor.name} has no place in a MiniCPM-V checkpoint") from None
        if rotated_halves and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads"] if "q_proj" in name else config["num_key_value_heads"]
            data = torch.from_numpy(interleave_rope_rows(data.float().numpy(), heads, inverse=True)).to(data.dtype)
        yield name, data
        if name == "llm.model.embed_tokens.weight" and not has_head:  # a tied head, written out
            yield "llm.lm_head.weight", data


def _vision_tensors(vision, hidden: int):
    """Projector tensors under checkpoint names, in their stored precision (float16 or float32;
    quantized projectors as bfloat16)."""
    arrays = ((tensor.name, _tensor(vision, tensor)) for tensor in vision.tensors)
    arrays = ((name, (t.float() if t.dtype == torch.bfloat16 else t).numpy()) for name, t in arrays)
    for name, data in checkpoint_tensors(arrays, hidden):
        yield name, torch.from_numpy(np.ascontiguousarray(data))


def _write_folder(stage: Path, llm, vision, config: dict) -> None:
    from ..quant.stream import ShardWriter

    writer = ShardWriter(stage)
    hidden = config["vision_config"]["hidden_size"]
    for name, data in itertools.chain(_llm_tensors(llm, config), _vision_tensors(vision, hidden)):
        writer.add(name, data)
    writer.close()
    tokenizer, tokenizer_config = tokenizer_files(llm)
    mean, std = field_value(vision, "clip.vision.image_mean"), field_value(vision, "clip.vision.image_std")
    preprocessor = {
        "version": config["version"],
        "image_feature_size": config["query_num"],
        "scale_resolution": config["image_size"],
        "patch_size": config["patch_size"],
        "max_slice_nums": 9,  # llama.cpp's, and the official default
        "norm_mean": list(mean) if mean is not None else [0.5] * 3,
        "norm_std": list(std) if std is not None else [0.5] * 3,
    }
    files = {
        "config.json": config,
        "tokenizer.json": tokenizer,
        "tokenizer_config.json": tokenizer_config,
        "preprocessor_config.json": preprocessor,
        "generation_config.json": {},
    }
    for filename, content in files.items():
        write_text_atomic(stage / filename, json.dumps(content, indent=1, ensure_ascii=False))
