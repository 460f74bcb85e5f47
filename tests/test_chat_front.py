"""ChatModel's conversation front against a scripted mock model and a byte tokenizer (no
checkpoint, no weights): the model "answers" a fixed text token by token, so what the front does
with it (stop strings, terminators, length limits, streaming equal to the whole answer,
cancelling, batching, the image-feature cache, the low-memory swap) is checked exactly."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from PIL import Image

from minicpmv.bench import write_byte_tokenizer
from minicpmv.chat import ChatModel
from minicpmv.errors import PromptError
from minicpmv.image_features import Residency
from minicpmv.model.checkpoint import LLM_PARTS, VISION_PARTS
from minicpmv.processing import MiniCPMVProcessor, ProcessorConfig
from minicpmv.processing.tokenizer import load_tokenizer

ANSWER = "Two red circles."


@dataclass
class _LLMConfig:
    max_position_embeddings: int = 4096
    hidden_size: int = 8


@dataclass
class _VisionConfig:
    faithful_idefics2_mask: bool = False


@dataclass
class _Config:
    query_num: int = 64
    downsample_mode: str | None = None
    llm: _LLMConfig = field(default_factory=_LLMConfig)
    vision: _VisionConfig = field(default_factory=_VisionConfig)
    raw: dict = field(default_factory=lambda: {"mock": True})


class ScriptedLLM:
    """Logits that pick, at each new position, the next token of `script` (then `end`): the
    step is read from the cache, the way a real decoder's cache knows how far it is."""

    def __init__(self, script: list[int], end: int, vocab: int):
        self.cfg, self.script, self.end, self.vocab = _LLMConfig(), script, end, vocab

    def new_cache(self, batch: int, length: int) -> dict:
        return {"step": 0}

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros((*ids.shape, self.cfg.hidden_size))

    def __call__(self, embeds, positions, mask, cache, last_only=False) -> torch.Tensor:
        step = cache["step"]
        cache["step"] += 1
        token = self.script[step] if step < len(self.script) else self.end
        logits = torch.full((embeds.shape[0], embeds.shape[1], self.vocab), -10.0)
        logits[:, -1, token] = 10.0
        return logits


class MockModel:
    """What ChatModel asks of a MiniCPMV: its config, LLM, input embeddings and image features."""

    def __init__(self, llm: ScriptedLLM):
        self.config, self.llm = _Config(), llm
        self.vision_weight = torch.zeros(1)  # where and in what dtype the vision parts compute
        self.encoded = 0  # crops through the "vision tower"

    def get_image_features(
        self, crops, sizes, per_call=None, time_groups=None, progress=None, downsample_mode=None
    ) -> torch.Tensor:
        self.encoded += len(crops)
        return torch.ones((len(crops), self.config.query_num, self.llm.cfg.hidden_size))

    def embed_inputs(self, input_ids, features, image_bound) -> torch.Tensor:
        return self.llm.embed(input_ids)


@pytest.fixture
def chat(tmp_path) -> ChatModel:
    write_byte_tokenizer(tmp_path)
    processor = MiniCPMVProcessor(ProcessorConfig.defaults("2.6"), load_tokenizer(tmp_path))
    tokenizer = processor.tokenizer
    script = tokenizer.encode(ANSWER)
    llm = ScriptedLLM(script, tokenizer.token_to_id("<|im_end|>"), tokenizer.vocab_size)
    return ChatModel(MockModel(llm), processor)


ASK = [{"role": "user", "content": "How many?"}]


def test_the_whole_answer_ends_at_the_terminator(chat):
    result = chat.generate(ASK, max_new_tokens=100)
    assert result.text == ANSWER and result.stopped_by == "stop"
    assert len(result.token_ids) == len(chat.tokenizer.encode(ANSWER))


def test_streamed_deltas_join_into_the_same_answer(chat):
    stream = chat.stream(ASK, max_new_tokens=100)
    deltas = list(stream)
    assert len(deltas) > 1 and "".join(deltas) == ANSWER == stream.result.text


def test_max_new_tokens_cuts_and_says_length(chat):
    result = chat.generate(ASK, max_new_tokens=3)
    assert len(result.token_ids) == 3 and result.stopped_by == "length"
    assert ANSWER.startswith(result.text)


def test_a_stop_string_ends_the_answer_before_it(chat):
    assert chat.generate(ASK, max_new_tokens=100, stop=[" red"]).text == "Two"


def test_cancelling_a_stream_stops_it_and_says_so(chat):
    stream = chat.stream(ASK, max_new_tokens=100)
    first = next(iter(stream))
    stream.cancel()
    rest = list(stream)
    assert stream.result.stopped_by == "cancelled" and len(first + "".join(rest)) < len(ANSWER)


def test_unknown_or_out_of_range_options_are_prompt_errors(chat):
    with pytest.raises(PromptError, match="unknown generation option"):
        chat.generate(ASK, temprature=0.5)
    with pytest.raises(PromptError, match="top_p"):
        chat.generate(ASK, top_p=0)
    with pytest.raises(PromptError, match="beam"):
        chat.stream(ASK, preset="precise")


def test_an_image_seen_again_is_not_encoded_again_unless_the_cache_is_off(chat):
    image = Image.new("RGB", (300, 200), (10, 200, 30))
    ask = [{"role": "user", "content": [image, "How many?"]}]
    chat.generate(ask, max_new_tokens=2)
    once = chat.model.encoded
    assert once > 0
    chat.generate(ask, max_new_tokens=2)
    assert chat.model.encoded == once
    chat.feature_cache_size = 0
    chat.generate(ask, max_new_tokens=2)
    assert chat.model.encoded == 2 * once


def test_low_memory_mode_swaps_halves_only_when_needed():
    calls = []

    class Checkpoint:
        def materialize(self, parts):
            calls.append(("in", parts))

        def release(self, parts):
            calls.append(("out", parts))

    residency = Residency(Checkpoint())
    for parts in (VISION_PARTS, LLM_PARTS, LLM_PARTS, VISION_PARTS):
        residency.need(parts)
    assert calls == [
        ("in", VISION_PARTS),
        ("out", VISION_PARTS),
        ("in", LLM_PARTS),
        ("out", LLM_PARTS),
        ("in", VISION_PARTS),
    ]
    assert residency.resident == VISION_PARTS and residency.low_memory
