"""A checkpoint's tokenizer in a GGUF (tokens, merges, pre-tokenizer, special ids, chat template)
and back to `tokenizer.json` / `tokenizer_config.json`.

llama.cpp tokenizes the prompt itself in its multimodal path (llama-cpp-python's chat handlers,
ollama), so the GGUF carries the real byte-level BPE: its token strings, merges and the name of
the pre-tokenizer llama.cpp knows (`tokenizer.ggml.pre`, which stands for a split regex that
llama.cpp compiles in; the names and regexes below are the public Qwen2 and Llama-3 ones).
Reading a GGUF back rebuilds an equivalent `tokenizer.json` for the `tokenizers` library.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# llama.cpp's pre-tokenizer name -> (split regex, NFC normalization)
PRE_TOKENIZERS = {"qwen2": (QWEN2_SPLIT, True), "llama-bpe": (LLAMA3_SPLIT, False)}
# when the regex is not one we know
FAMILY_PRE = {"qwen2": "qwen2", "qwen3": "qwen2", "qwen3_5": "qwen35", "llama": "llama-bpe"}

# gguf.TokenType values (kept here so that reading needs no enum lookups)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def _split_regex(tokenizer: dict) -> str | None:
    """The Split regex of a tokenizer.json's pre-tokenizer, if it has one."""
    pre = tokenizer.get("pre_tokenizer") or {}
    for step in pre.get("pretokenizers", [pre]):
        if step.get("type") == "Split":
            return (step.get("pattern") or {}).get("Regex")
    return None


def _merges(model: dict) -> list[str]:
    # tokenizers writes merges as "a b" strings (older files) or [a, b] pairs (newer ones)
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def write_vocabulary(writer, vocab_size: int, family: str, folder: Path | None) -> None:
    """The checkpoint's tokenizer as GGUF keys, its tokens padded to the embedding rows. Without
    a tokenizer.json (the tiny test models of 2.0), the byte alphabet and placeholders."""
    import gguf

    tokenizer = json.loads((folder / "tokenizer.json").read_text()) if folder else None
    config_path = folder / "tokenizer_config.json" if folder else None
    config = json.loads(config_path.read_text()) if config_path and config_path.exists() else {}
    tokens: list[str | None] = [None] * vocab_size
    types = [UNUSED] * vocab_size
    merges = ["Ġ Ġ"]  # llama.cpp refuses a BPE vocabulary without merges
    if tokenizer is not None:
        for text, index in tokenizer["model"]["vocab"].items():
            if index < vocab_size:
                tokens[index], types[index] = text, NORMAL
        for added in tokenizer.get("added_tokens", []):
            if added["id"] < vocab_size:
                tokens[added["id"]] = added["content"]
                types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
        merges = _merges(tokenizer["model"]) or merges
    else:
        from tokenizers import pre_tokenizers

        for index, text in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())[:vocab_size]):
            tokens[index], types[index] = text, NORMAL
    pre = next((name for name, (regex, _) in PRE_TOKENIZERS.items() if regex == _split_regex(tokenizer or {})), None)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre or FAMILY_PRE[family])
    writer.add_token_list([text if text is not None else f"[PAD{i}]" for i, text in enumerate(tokens)])
    writer.add_token_types([gguf.TokenType(t) for t in types])
    writer.add_token_merges(merges)
    _write_special_ids(writer, tokens, config, tokenizer)


def _write_special_ids(writer, tokens: list, config: dict, tokenizer: dict | None) -> None:
    index = {text: i for i, text in enumerate(tokens) if text is not None}

    def token_id(key):
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        return index.get(value)

    bos = token_id("bos_token")
    # a tokenizer.json whose post-processor prepends a token (Llama-3's <|begin_of_text|>)
    post = (tokenizer or {}).get("post_processor") or {}
    steps = post.get("processors", [post])
    added = [v["ids"][0] for step in steps for v in (step.get("special_tokens") or {}).values() if v.get("ids")]
    writer.add_add_bos_token(bool(added))
    if added:
        bos = added[0]
    for key, add in (("eos_token", writer.add_eos_token_id), ("pad_token", writer.add_pad_token_id)):
        if token_id(key) is not None:
            add(token_id(key))
    if bos is not None:
        writer.add_bos_token_id(bos)
    if isinstance(config.get("chat_template"), str):
        writer.add_chat_template(config["chat_template"])


def field_value(reader, key: str, default=None):
    """A GGUF metadata value as Python (str, number, bool, or a list of them)."""
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def tokenizer_files(reader) -> tuple[dict, dict]:
    """(tokenizer.json, tokenizer_config.json) contents rebuilt from a GGUF's tokenizer keys."""
    model = field_value(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ConfigError(f"GGUF tokenizer {model!r}: only byte-level BPE ('gpt2') vocabularies are read here")
    pre = field_value(reader, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ConfigError(f"GGUF pre-tokenizer {pre!r} is not one of {', '.join(PRE_TOKENIZERS)}")
    regex, nfc = PRE_TOKENIZERS[pre]
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
    vocab, added = {}, []
    for index, (text, kind) in enumerate(zip(tokens, types)):
        if kind == NORMAL:
            vocab[text] = index
        elif kind in (CONTROL, USER_DEFINED):
            added.append(_added(index, text, kind == CONTROL))

    def special(key):
        index = field_value(reader, f"tokenizer.ggml.{key}_token_id")
        return None if index is None else tokens[index]

    bos = special("bos")
    add_bos = bool(field_value(reader, "tokenizer.ggml.add_bos_token", False)) and bos is not None
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"} if nfc else None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": _bos_template(bos, tokens.index(bos)) if add_bos else None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": vocab,
            "merges": list(field_value(reader, "tokenizer.ggml.merges", [])),
        },
    }
    config = {
        "bos_token": bos if add_bos else None,
        "eos_token": special("eos"),
        "pad_token": special("padding"),
        "chat_template": field_value(reader, "tokenizer.chat_template"),
        "added_tokens_decoder": {str(a["id"]): a for a in added},
    }
    return tokenizer, {k: v for k, v in config.items() if v is not None or k == "bos_token"}


def _added(index: int, text: str, special: bool) -> dict:
    return {
        "id": index,
        "content": text,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }


def _bos_template(bos: str, bos_id: int) -> dict:
    """Llama-3's post-processor: the begin-of-text token before every encoded text."""
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
