"""The demo model's starting point: a byte-level BPE tokenizer trained on the generated world's
text (with the real 2.6 special tokens and chat template) and a small 2.6-layout checkpoint
(NaViT vision encoder, resampler, Qwen2-style LLM) with seeded random weights, written as an
official folder that `minicpmv train` then takes through stage1 -> stage2 -> stage3 -> sft."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from ..model.checkpoint import save_model
from ..model.config import MiniCPMVConfig
from ..model.initialization import initialize_for_training
from ..model.minicpmv import MiniCPMV
from ..processing.tokenizer import V26_CHAT_TEMPLATE, V26_SPECIAL_TOKENS

# Sized for 2 CPU cores: 6.35 M parameters (25.4 MB in float32, shipped in bfloat16). Patches of
# 28 px instead of SigLIP's 14: a 448-px slice is 16x16 = 256 vision tokens, a quarter of the
# compute, and a 22-px character still falls within one or two patches.
DEMO_CONFIG = {
    "architectures": ["MiniCPMV"],
    "model_type": "minicpmv",
    "version": 2.6,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 8192,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": True,
    "query_num": 64,
    "batch_vision_input": True,
    "slice_mode": True,
    "use_image_id": True,
    "drop_vision_last_layer": False,
    "image_size": 448,
    "patch_size": 28,
    "vision_batch_size": 16,
    "vision_config": {
        "model_type": "siglip_vision_model",
        "hidden_size": 192,
        "intermediate_size": 768,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "patch_size": 28,
        "image_size": 448,
    },
}
PREPROCESSOR_CONFIG = {
    "image_processor_type": "MiniCPMVImageProcessor",
    "processor_class": "MiniCPMVProcessor",
    "max_slice_nums": 9,
    "scale_resolution": 448,
    "patch_size": 28,
    "im_start": "<image>",
    "im_end": "</image>",
    "slice_start": "<slice>",
    "slice_end": "</slice>",
    "unk": "<unk>",
    "norm_mean": [0.5, 0.5, 0.5],
    "norm_std": [0.5, 0.5, 0.5],
    "image_feature_size": 64,
    "im_id_start": "<image_id>",
    "im_id_end": "</image_id>",
    "slice_mode": True,
    "use_image_id": True,
    "version": 2.6,
}
TEMPLATE_WORDS = ["system", "user", "assistant", "You are a helpful assistant."]


def record_texts(paths: list[Path]) -> list[str]:
    """Every question and answer of the given fine-tuning JSON files."""
    texts = list(TEMPLATE_WORDS)
    for path in paths:
        for record in json.loads(Path(path).read_text()):
            texts += [turn["content"].replace("<image>", "") for turn in record["conversations"]]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 1024):
    """Byte-level BPE (every byte representable) with the 2.6 special tokens added. Numbers
    split into single digits first, as Qwen2's tokenizer does: a page's digits are one per cell
    (minicpmv.demo.documents), so each digit the LLM writes is one character it read."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=V26_SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def demo_configs(query_num: int | None = None) -> tuple[dict, dict]:
    """(model config, preprocessor config) of the demo model, with another number of resampler
    queries per slice where given (the query ablation)."""
    config, preprocessor = copy.deepcopy(DEMO_CONFIG), dict(PREPROCESSOR_CONFIG)
    if query_num is not None:
        config["query_num"] = preprocessor["image_feature_size"] = query_num
    return config, preprocessor


def init_checkpoint(
    folder: str | Path, train_json: list[Path], seed: int = 0, vocab_size: int = 1024, query_num: int | None = None
) -> Path:
    """Write the untrained demo checkpoint: tokenizer from the training texts, random weights."""
    config, preprocessor = demo_configs(query_num)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(record_texts(train_json), vocab_size)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "chat_template": V26_CHAT_TEMPLATE,
                "eos_token": "<|im_end|>",
                "pad_token": "<|endoftext|>",
                "unk_token": "<unk>",
            },
            indent=1,
        )
    )
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=1))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": tokenizer.token_to_id("<|im_end|>")}))
    config["vocab_size"] = tokenizer.get_vocab_size()
    model = initialize_for_training(MiniCPMV(MiniCPMVConfig.from_dict(config)), seed=seed)
    save_model(model, folder)
    return folder


def bundle_checkpoint(checkpoint: str | Path, target: str | Path) -> Path:
    """Copy a trained demo checkpoint to `target` as the package ships it: weights in bfloat16
    (half the size; the loader widens them to float32 on CPU), no optimizer state."""
    from ..model.checkpoint import load_model

    return save_model_folder(load_model(checkpoint).to(torch.bfloat16), checkpoint, target)


def save_model_folder(model, source: str | Path, target: str | Path, processor_changes: dict | None = None) -> Path:
    """`model` as a model folder at `target`, with the tokenizer and processor files of `source`
    (not trainer_state.pt; `processor_changes` overrides keys of its preprocessor_config.json).
    Written beside `target` and swapped in, so a failed write leaves what was there untouched,
    and a stopped one leaves no half folder."""
    from ..files import staged_folder
    from ..training.checkpoints import copy_model_files

    source, target = Path(source), Path(target)
    with staged_folder(target) as staging:
        save_model(model, staging)
        copy_model_files(source, staging)
        processor = staging / "preprocessor_config.json"
        if processor_changes and processor.exists():
            processor.write_text(json.dumps({**json.loads(processor.read_text()), **processor_changes}, indent=1))
    return target
