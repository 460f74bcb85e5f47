"""`minicpmv bench`: the paper's Fig. 6 ablation on this machine.

Rows add one deployment optimisation at a time (no-opt -> +memory -> +config -> +int8 ->
+int4; +config is the stored `minicpmv tune` settings plus the vision encoder in bfloat16 on CPUs
with native bf16); columns are load time, image-encode latency for a 1344x1344 image (10 crops), prefill
and decode tokens/s and peak RSS. Each row runs in a fresh process so its peak RSS is its own.
No real weights exist here, so `--random-init` builds a real-size architecture with seeded
random weights, written once to a cache folder (speed and memory do not depend on the values).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .files import cache_dir, staged_folder
from .model.config import OFFICIAL_ARCHITECTURES, SO400M
from .processing.tokenizer import V26_CHAT_TEMPLATE, V26_SPECIAL_TOKENS

ARCHITECTURES = {
    # 2.6 layout with the Qwen2-1.5B LLM: the size that fits this machine in float32
    "qwen2-1.5b": {
        "model_type": "minicpmv",
        "version": 2.6,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "query_num": 64,
        "drop_vision_last_layer": False,
        "vision_config": dict(SO400M),
    },
    "2.6": OFFICIAL_ARCHITECTURES["2.6"],
    "4.5": OFFICIAL_ARCHITECTURES["4.5"],  # SigLIP-400M + Qwen3-8B (q/k norms), the 3-D resampler
    "4.6": OFFICIAL_ARCHITECTURES["4.6"],  # SigLIP-400M + window merger + Qwen3.5-0.8B (DeltaNet)
    # 2.7 GB: the real vision tower with a 4-layer Qwen2-1.5B-wide LLM (the memory benchmarks)
    "qwen2-1.5b-4layers": {
        "model_type": "minicpmv",
        "version": 2.6,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 4,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 32000,
        "query_num": 64,
        "drop_vision_last_layer": False,
        "vision_config": dict(SO400M),
    },
    # for tests: every code path of the bench in seconds
    "tiny": {
        "model_type": "minicpmv",
        "version": 2.6,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 400,
        "query_num": 64,
        "drop_vision_last_layer": False,
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "patch_size": 14,
            "image_size": 980,
        },
    },
}
ROWS = {  # name: (low_memory, tuned, weights, vision_dtype, compile)
    "no-opt": (False, False, "fp32", "float32", "off"),
    "+memory": (True, False, "fp32", "float32", "off"),
    "+compile": (True, False, "fp32", "float32", "on"),
    # from here on the configuration search decides threads, crop batching and compilation
    "+config": (True, True, "fp32", "auto", "auto"),
    "+int8": (True, True, "int8", "auto", "auto"),
    "+int4": (True, True, "int4", "auto", "auto"),
}
INT4_GROUP = 64  # 4.5 bits per weight with float16 scale and zero: llama.cpp Q4_0's size
# the 2.6 markers, and 4.6's image placeholder token
SPECIAL_TOKENS, QWEN_TEMPLATE = [*V26_SPECIAL_TOKENS, "<|image_pad|>"], V26_CHAT_TEMPLATE


def write_byte_tokenizer(folder: Path) -> None:
    """A byte-level tokenizer (256 byte tokens, no merges) with the 2.6 special tokens: enough to
    drive a random-weight model; its ids stay far below any real vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {symbol: i for i, symbol in enumerate(sorted(alphabet))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": QWEN_TEMPLATE,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<unk>",
            }
        )
    )


def random_weights(config: dict):
    """(official name, float32 tensor) of every weight of the architecture, one at a time: seeded
    normal values * 0.02, the same sequence for every dtype the checkpoint is written in (a tied
    head is not written, as in the released files)."""
    import torch

    from .model.checkpoint import rename
    from .model.config import MiniCPMVConfig
    from .model.minicpmv import MiniCPMV
    from .versions import facts

    parsed = MiniCPMVConfig.from_dict(config)
    with torch.device("meta"):
        model = MiniCPMV(parsed)
    prefixes = facts(parsed.version).checkpoint_prefixes
    generator = torch.Generator().manual_seed(0)
    for name, meta in model.state_dict().items():
        if name == "llm.lm_head.weight" and parsed.llm.tie_word_embeddings:
            continue
        yield rename(name, prefixes, to_official=True), torch.randn(meta.shape, generator=generator) * 0.02


def random_checkpoint(name: str, root: Path) -> Path:
    """The seeded random float32 checkpoint of an architecture, written once."""
    from safetensors.torch import save_file

    folder = root / name / "fp32"
    if (folder / "model.safetensors").exists():
        return folder
    config = ARCHITECTURES[name]
    tensors = dict(random_weights(config))
    with staged_folder(folder) as stage:  # whole or absent: the check above trusts its weights file
        save_file(tensors, stage / "model.safetensors", metadata={"format": "pt"})
        (stage / "config.json").write_text(json.dumps(config, indent=2))
        write_byte_tokenizer(stage)
    return folder


def random_bf16_checkpoint(name: str, root: Path) -> Path:
    """A seeded random bfloat16 checkpoint (the official dtype), written shard by shard: a real
    size one (16 GB for 2.6) never is in memory whole."""
    import torch

    from .quant.stream import ShardWriter

    folder = root / name / "bf16"
    if (folder / "config.json").exists():
        return folder
    config = ARCHITECTURES[name]
    with staged_folder(folder) as stage:
        writer = ShardWriter(stage, 2 << 30)
        for tensor_name, tensor in random_weights(config):
            writer.add(tensor_name, tensor.to(torch.bfloat16))
        writer.close()
        (stage / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}, indent=2))
        write_byte_tokenizer(stage)
    return folder


def quantized_folder_name(bits: int) -> str:
    return f"int4-g{INT4_GROUP}" if bits == 4 else "int8"


def random_quantized_checkpoint(name: str, root: Path, bits: int = 4) -> Path:
    """A seeded random checkpoint written directly in the int4 (group INT4_GROUP) or int8 layout,
    never holding float32 LLM weights: how a real-size 2.6 (8 B parameters) fits this machine."""
    import torch
    from safetensors.torch import save_file

    from .model.config import MiniCPMVConfig
    from .model.minicpmv import MiniCPMV
    from .quant import QuantConfig, prepare_quantized_layout

    folder = root / name / quantized_folder_name(bits)
    if (folder / "model.safetensors").exists():
        return folder
    config = dict(ARCHITECTURES[name])
    quant = QuantConfig(bits=bits, group_size=INT4_GROUP)
    with torch.device("meta"):
        model = MiniCPMV(MiniCPMVConfig.from_dict(config))
    prepare_quantized_layout(model, quant)
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for tensor_name, meta in model.state_dict().items():
        if meta.dtype in (torch.uint8, torch.int8):  # packed nibbles / int8 values: any byte
            low, high = (0, 256) if meta.dtype == torch.uint8 else (-127, 128)
            tensors[tensor_name] = torch.randint(low, high, meta.shape, generator=generator, dtype=meta.dtype)
        elif tensor_name.endswith(".scales"):  # int4 steps / int8 scales of a 0.02-wide weight
            tensors[tensor_name] = torch.full(meta.shape, 0.02 / (4 if bits == 4 else 64), dtype=meta.dtype)
        else:
            tensors[tensor_name] = (torch.randn(meta.shape, generator=generator) * 0.02).to(meta.dtype)
    with staged_folder(folder) as stage:
        save_file(tensors, stage / "model.safetensors", metadata={"format": "pt"})
        (stage / "config.json").write_text(json.dumps({**config, "quantization_config": quant.to_dict()}, indent=2))
        write_byte_tokenizer(stage)
    return folder


def quantized_checkpoint(source: Path, bits: int) -> Path:
    """int8 or int4 (group INT4_GROUP) copy of a checkpoint, written once beside it."""
    import shutil

    from .model.checkpoint import load_model, save_model
    from .quant import QuantConfig, quantize_model

    folder = source.parent / quantized_folder_name(bits)
    if (folder / "config.json").exists():
        return folder
    model = quantize_model(load_model(source), QuantConfig(bits=bits, group_size=INT4_GROUP))
    save_model(model, folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(source / name, folder / name)
    return folder


def run_row(
    folder: str,
    low_memory: bool,
    tuned: bool,
    prompt_tokens: int,
    new_tokens: int,
    vision_dtype: str = "auto",
    compile: str = "auto",
) -> dict:
    """One row, in this (fresh) process."""
    from PIL import Image

    from .chat import load
    from .memory import peak_rss_mib

    if not tuned:
        os.environ["MINICPMV_CACHE_DIR"] = str(Path(folder) / "no-tuning")  # an empty cache
    start = time.perf_counter()
    chat = load(
        folder, dtype="float32", device="cpu", low_memory=low_memory, vision_dtype=vision_dtype, compile=compile
    )
    load_seconds = time.perf_counter() - start - chat.compile_seconds
    image = Image.effect_noise((1344, 1344), 64).convert("RGB")
    text = "x " * max(0, prompt_tokens // 2)
    messages = [{"role": "user", "content": [image, text + "Describe the image."]}]
    result = chat.generate(messages, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return {
        "load_s": load_seconds + result.load_seconds - chat.load_seconds,
        "encode_ms": result.image_seconds * 1000,
        "image_tokens": result.image_tokens,
        "prompt_tokens": len(result.prompt_token_ids),
        "prefill_tok_s": len(result.prompt_token_ids) / result.prefill_seconds,
        "decode_tok_s": len(result.token_ids) / result.decode_seconds,
        "peak_rss_mib": peak_rss_mib(),
        "compile_s": chat.compile_seconds,
        "compiled": list(chat.compiled),
        "tuning": chat.tuning,
    }


def bench(
    architecture: str = "qwen2-1.5b",
    rows: list[str] | None = None,
    cache: str | None = None,
    prompt_tokens: int = 64,
    new_tokens: int = 32,
    tune_first: bool = True,
) -> list[dict]:
    """Build (once) the random-weight checkpoints, tune them if asked, run each row in a fresh
    process and print a markdown table."""
    root = Path(cache or cache_dir()) / "random-init"
    base = random_checkpoint(architecture, root)
    folders = {"fp32": base}
    wanted = rows or list(ROWS)
    for bits in (8, 4):
        if any(ROWS[r][2] == f"int{bits}" for r in wanted):
            folders[f"int{bits}"] = quantized_checkpoint(base, bits)
    if tune_first and any(ROWS[r][1] for r in wanted):
        from .tuning import tune_model

        for weights in sorted({ROWS[r][2] for r in wanted if ROWS[r][1]}):
            print(f"tuned {weights}: {tune_model(str(folders[weights]), repeat=1, try_compile=True)['best']}")
    print(f"| {architecture} | load s | compile s | encode 1344² ms | prefill tok/s | decode tok/s | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    results = []
    for name in wanted:
        low_memory, tuned, weights, vision_dtype, compile = ROWS[name]
        command = [
            sys.executable,
            "-m",
            "minicpmv.bench",
            str(folders[weights]),
            str(int(low_memory)),
            str(int(tuned)),
            str(prompt_tokens),
            str(new_tokens),
            vision_dtype,
            compile,
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True)
        row = {"row": name, **json.loads(out.stdout.strip().splitlines()[-1])}
        results.append(row)
        compiled = f"{row['compile_s']:.0f} ({'+'.join(row['compiled'])})" if row["compiled"] else "-"
        print(
            f"| {name} | {row['load_s']:.1f} | {compiled} | {row['encode_ms']:.0f} | {row['prefill_tok_s']:.1f} | "
            f"{row['decode_tok_s']:.2f} | {row['peak_rss_mib']:.0f} |",
            flush=True,
        )
    return results


if __name__ == "__main__":  # one row in a fresh process: folder low_memory tuned prompt new vision compile
    folder_arg, low_arg, tuned_arg, prompt_arg, new_arg, vision_arg, compile_arg = sys.argv[1:8]
    print(
        json.dumps(
            run_row(
                folder_arg, low_arg == "1", tuned_arg == "1", int(prompt_arg), int(new_arg), vision_arg, compile_arg
            )
        )
    )
