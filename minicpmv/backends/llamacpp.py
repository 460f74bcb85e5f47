"""llama.cpp as the LLM (the `llamacpp` extra: llama-cpp-python), fed with this package's embeddings.

The vision encoder, resampler, processor, token embeddings and sampling stay here; llama.cpp runs
the decoder stack and head from a GGUF of the same checkpoint (`minicpmv export-gguf`). It takes
the prompt as embeddings (image features written in, as for our own LLM) through llama.cpp's
embedding batches, and hands back logits, so answers come from the same generation engine.

`LlamaCppLLM` has the interface the engine uses of `model.llm.LanguageModel` (`cfg`, `embed`,
`new_cache`, call -> logits) for one sequence at a time: no batches, no beam search.
"""

from __future__ import annotations

import ctypes
import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, PromptTooLongError
from ..model.config import LLMConfig
from .gguf_export import architecture

EMBEDDING_PARTS = ("llm.model.embed_tokens.",)  # all of the checkpoint's LLM this backend reads
DEFAULT_CONTEXT = 8192  # the official max_inp_length of 2.6; the KV cache is sized for it
# llama.cpp architectures with M-RoPE read 4 position rows per token (T, H, W, and a 4th that is 0
# for text and images) from an embedding batch, laid out row after row
POSITION_ROWS = {"qwen35": 4, "qwen35moe": 4}


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise ConfigError("the llama.cpp backend needs llama-cpp-python: pip install 'minicpmv[llamacpp]'") from None
    return llama_cpp


def _gguf_metadata(path: Path) -> dict:
    """The few GGUF keys that must agree with the checkpoint, read with the gguf package."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()

    def number(key):
        field = reader.fields.get(f"{arch}.{key}")
        return None if field is None else field.parts[-1][0].item()

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return {
        "architecture": arch,
        "layers": number("block_count"),
        "hidden": number("embedding_length"),
        "heads": number("attention.head_count"),
        "kv_heads": number("attention.head_count_kv"),
        "vocab": None if tokens is None else len(tokens.data),
    }


def check_gguf_matches(path: Path, cfg: LLMConfig) -> None:
    """A GGUF of another model would answer with garbage: refuse it, naming the first mismatch."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such GGUF file")
    try:
        meta = _gguf_metadata(path)
    except (ValueError, KeyError, IndexError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable GGUF file ({exc})") from None
    expected = {
        "architecture": architecture(cfg),
        "layers": cfg.num_layers,
        "hidden": cfg.hidden_size,
        "heads": cfg.num_heads,
        "kv_heads": cfg.num_kv_heads,
        "vocab": cfg.vocab_size,
    }
    for key, value in expected.items():
        if meta[key] != value:
            raise ConfigError(f"{path}: {key} is {meta[key]} in the GGUF but {value} in the checkpoint")


class LlamaCppCache:
    """Stands for llama.cpp's own KV cache of sequence 0: just how many positions it holds."""

    def __init__(self, max_len: int):
        self.length, self.max_len = 0, max_len

    def advance(self, steps: int) -> None:
        self.length += steps

    def reorder(self, rows):
        raise ConfigError("the llama.cpp backend decodes one sequence: no beam search (use greedy or sampling)")


class LlamaCppLLM:
    """The decoder stack and head in llama.cpp; `embed` is the checkpoint's own embedding table."""

    max_batch = 1  # one sequence (n_seq_max = 1)

    def __init__(self, gguf_path: str | Path, embed, cfg: LLMConfig, context: int | None = None):
        gguf_path = Path(gguf_path)
        check_gguf_matches(gguf_path, cfg)
        self.lib = llama = _llama_cpp()
        self.embed = embed
        context = min(context or DEFAULT_CONTEXT, cfg.max_position_embeddings)
        self.cfg = dataclasses.replace(cfg, max_position_embeddings=context)  # the engine caps answers by it
        llama.llama_backend_init()
        _silence(llama)
        model_params = llama.llama_model_default_params()
        self.model = llama.llama_model_load_from_file(str(gguf_path).encode(), model_params)
        if not self.model:
            raise ConfigError(f"{gguf_path}: llama.cpp could not load it")
        params = llama.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = context, context, min(context, 512)
        params.n_seq_max = 1
        self.context = llama.llama_init_from_model(self.model, params)
        if not self.context:
            llama.llama_model_free(self.model)
            raise ConfigError(f"{gguf_path}: llama.cpp could not create a context of {context} tokens")
        self.vocab = llama.llama_vocab_n_tokens(llama.llama_model_get_vocab(self.model))
        self.batch = llama.llama_batch_init(context, cfg.hidden_size, 1)
        self.position_rows = POSITION_ROWS.get(architecture(cfg), 1)
        # the batch holds one position per token; an M-RoPE model reads its rows from a buffer of
        # ours, swapped in for the batch's own (put back before llama.cpp frees the batch)
        self._own_pos = ctypes.cast(self.batch.pos, ctypes.c_void_p).value  # an address: a field read is a view
        self._positions = (llama.llama_pos * (context * self.position_rows))()
        self.batch.pos = ctypes.cast(self._positions, ctypes.POINTER(llama.llama_pos))
        self._threads = None

    def __del__(self):
        llama = getattr(self, "lib", None)
        if llama is not None and getattr(self, "context", None):
            try:
                self.batch.pos = ctypes.cast(self._own_pos, ctypes.POINTER(llama.llama_pos))
                llama.llama_batch_free(self.batch)
                llama.llama_free(self.context)
                llama.llama_model_free(self.model)
            except (TypeError, AttributeError):  # at interpreter exit the bindings may be gone first
                pass
            self.context = None

    def new_cache(self, batch: int, max_len: int) -> LlamaCppCache:
        if batch != 1:
            raise ConfigError("the llama.cpp backend decodes one sequence at a time: no batches or beam search")
        if max_len > self.cfg.max_position_embeddings:
            raise PromptTooLongError(
                f"{max_len} tokens do not fit llama.cpp's context of {self.cfg.max_position_embeddings}"
            )
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.context), True)
        return LlamaCppCache(max_len)

    def _follow_torch_threads(self) -> None:
        """The engine sets torch's threads per phase (tuned); llama.cpp uses the same count."""
        threads = torch.get_num_threads()
        if threads != self._threads:
            self.lib.llama_set_n_threads(self.context, threads, threads)
            self._threads = threads

    def __call__(
        self,
        inputs_embeds: torch.Tensor,
        position_ids=None,
        attention_mask=None,
        cache: LlamaCppCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Embeddings (1, T, D) appended to the sequence -> logits (1, T, V), or (1, 1, V) with last_only."""
        if cache is None:
            raise ConfigError("the llama.cpp backend needs a cache from new_cache()")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ConfigError("the llama.cpp backend takes no padding")
        length = inputs_embeds.shape[1]
        if cache.length + length > cache.max_len:
            raise PromptTooLongError(f"llama.cpp's cache holds {cache.max_len} tokens, {cache.length + length} needed")
        self._follow_torch_threads()
        rows = np.ascontiguousarray(inputs_embeds[0].detach().to(torch.float32).cpu().numpy())  # (T, D)
        batch = self.batch
        batch.n_tokens = length
        ctypes.memmove(batch.embd, rows.ctypes.data, rows.nbytes)
        self._write_positions(position_ids, cache.length, length)
        for i in range(length):
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = int(i == length - 1 or not last_only)
        status = self.lib.llama_decode(self.context, batch)
        if status != 0:
            raise RuntimeError(f"llama.cpp llama_decode failed with status {status}")
        cache.advance(length)
        first = length - 1 if last_only else 0
        logits = [
            np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.context, i), shape=(self.vocab,))
            for i in range(first, length)
        ]
        return torch.from_numpy(np.stack(logits))[None]  # (1, T or 1, V), a copy

    def _write_positions(self, position_ids, start: int, length: int) -> None:
        """Position row r of token i at [r * length + i]: the given (B, T) or (3, B, T) ids, else
        start + i; M-RoPE's T, H and W rows from them and a 4th row of zeros."""
        if position_ids is None or self.position_rows == 1:
            rows = np.arange(start, start + length)[None]  # (1, T)
        else:
            rows = position_ids[:, 0].cpu().numpy() if position_ids.dim() == 3 else position_ids[:1].cpu().numpy()
            if (np.diff(rows[0]) != 1).any():
                # llama.cpp masks attention by position: tokens sharing a T position (4.7's image
                # canvas) would see each other by their (H, W) order, not by their order in the prompt
                raise ConfigError(
                    "the llama.cpp backend cannot run 4.7's canvas positions of an image prompt "
                    "(llama.cpp masks attention by position); use this package's own LLM for it"
                )
        if self.position_rows > 1:
            rows = np.concatenate([np.broadcast_to(rows, (3, length)), np.zeros((1, length), rows.dtype)])
        flat = np.ascontiguousarray(rows, dtype=np.int32).reshape(-1)  # (rows * T,)
        ctypes.memmove(self._positions, flat.ctypes.data, flat.nbytes)


_LOG_CALLBACK: list = []  # kept alive for as long as llama.cpp may call it


def _silence(llama) -> None:
    """llama.cpp logs every load to stderr; the timing line says what matters."""
    if not _LOG_CALLBACK:
        _LOG_CALLBACK.append(llama.llama_log_callback(lambda level, text, user_data: None))
        llama.llama_log_set(_LOG_CALLBACK[0], ctypes.c_void_p())
