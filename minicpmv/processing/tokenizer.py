"""Text tokenizers of the three checkpoints, without transformers or remote code.

- 2.5 / 2.6: `tokenizer.json` through the `tokenizers` library. Its post-processor adds what the
  checkpoint adds (2.5's Llama-3 file prepends <|begin_of_text|>; 2.6 adds nothing).
- 2.0: `tokenizer.model` through sentencepiece, split on the added tokens of
  tokenizer_config.json first, exactly like transformers' slow LlamaTokenizer with legacy=True.

Special-token ids are always looked up by their strings.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from ..errors import ConfigError
from ..jsonfile import read_json_object

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


# the special tokens and chat template of the 2.6 format (Qwen2 chat markup plus image markers)
V26_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "</image>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<quad>",
    "</quad>",
    "<point>",
    "</point>",
    "<slice>",
    "</slice>",
    "<image_id>",
    "</image_id>",
    "<unk>",
]
V26_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TextTokenizer:
    """Common interface: encode/decode, id lookup, special tokens and the chat template."""

    def __init__(self, tokenizer_config: dict):
        self.config = tokenizer_config
        self.chat_template: str | None = tokenizer_config.get("chat_template")
        self.special_tokens = {key: _token_text(tokenizer_config.get(key)) for key in SPECIAL_TOKEN_KEYS}

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with the special tokens the checkpoint's tokenizer adds itself."""
        raise NotImplementedError

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for (its longest vocabulary entry): a text of
        N characters is at least N / max_token_chars tokens, known without tokenizing it."""
        return max(1, max(len(piece) for piece in self._pieces()))

    def _pieces(self):
        raise NotImplementedError

    def require_id(self, token: str) -> int:
        """Id of a token that must exist (image markers, terminators)."""
        token_id = self.token_to_id(token)
        if token_id is None:
            raise ConfigError(f"tokenizer: the token {token!r} is not in the vocabulary")
        return token_id


class HFTokenizer(TextTokenizer):
    """A `tokenizer.json` (2.5, 2.6 and the demo model)."""

    def __init__(self, path: Path, tokenizer_config: dict):
        from tokenizers import Tokenizer

        super().__init__(tokenizer_config)
        try:
            self.backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - the library raises plain Exception
            raise ConfigError(f"{path}: cannot load tokenizer ({exc})") from None

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _pieces(self):
        return self.backend.get_vocab(with_added_tokens=True)


class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece `tokenizer.model` with added tokens (MiniCPM-V 2.0)."""

    def __init__(self, path: Path, tokenizer_config: dict):
        import sentencepiece

        super().__init__(tokenizer_config)
        try:
            self.backend = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{path}: cannot load SentencePiece model ({exc})") from None
        self.add_bos = bool(tokenizer_config.get("add_bos_token", True))
        self.added_tokens = _added_tokens(tokenizer_config)
        self._added_ids = set(self.added_tokens.values())
        pattern = "|".join(re.escape(t) for t in sorted(self.added_tokens, key=len, reverse=True))
        self._splitter = re.compile(f"({pattern})") if pattern else None

    def encode(self, text: str) -> list[int]:
        ids = [self.require_id(self.special_tokens["bos_token"])] if self.add_bos else []
        chunks = self._splitter.split(text) if self._splitter else [text]
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self.added_tokens:
                ids.append(self.added_tokens[chunk])
            else:
                ids.extend(self.backend.encode(chunk))
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        pieces, run = [], []
        for token_id in ids:
            is_special = token_id in self._added_ids or self.backend.is_control(token_id)
            if is_special and skip_special_tokens:
                continue
            if is_special:  # sentencepiece would drop or mangle these pieces
                pieces.append(self.backend.decode(run))
                pieces.append(self.backend.id_to_piece(token_id))
                run = []
            else:
                run.append(token_id)
        pieces.append(self.backend.decode(run))
        return "".join(pieces)

    def token_to_id(self, token: str) -> int | None:
        if token in self.added_tokens:
            return self.added_tokens[token]
        token_id = self.backend.piece_to_id(token)
        return None if token_id == self.backend.unk_id() and token != self.backend.id_to_piece(token_id) else token_id

    @property
    def vocab_size(self) -> int:
        return self.backend.get_piece_size()

    def _pieces(self):
        return [*map(self.backend.id_to_piece, range(self.backend.get_piece_size())), *self.added_tokens]


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """The tokenizer of a checkpoint folder: tokenizer.json if present, else tokenizer.model."""
    folder = Path(path)
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = read_json_object(config_path) if config_path.exists() else {}
    template_path = folder / "chat_template.jinja"  # transformers 5 keeps the template in its own file
    if "chat_template" not in tokenizer_config and template_path.exists():
        tokenizer_config["chat_template"] = template_path.read_text(encoding="utf-8")
    if (folder / "tokenizer.json").exists():
        return HFTokenizer(folder / "tokenizer.json", tokenizer_config)
    if (folder / "tokenizer.model").exists():
        return SentencePieceTokenizer(folder / "tokenizer.model", tokenizer_config)
    raise ConfigError(f"{folder}: no tokenizer.json or tokenizer.model")


def _token_text(value) -> str | None:
    """tokenizer_config writes special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _added_tokens(tokenizer_config: dict) -> dict[str, int]:
    decoder = tokenizer_config.get("added_tokens_decoder") or {}
    return {_token_text(entry): int(token_id) for token_id, entry in decoder.items()}
