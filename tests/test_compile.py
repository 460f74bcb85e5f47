"""torch.compile of the decode step and the vision tower: same answers as eager (float and
quantized layers, normal and low-memory loading), compiled once at load (no graph is built while
answering), chosen by the option or by `minicpmv tune --compile`."""

import pytest
import torch
from conftest import REFERENCE, TINY
from PIL import Image

from minicpmv import load
from minicpmv.compilation import compile_parts
from minicpmv.errors import ConfigError
from minicpmv.quant import QuantConfig, quantize_model

CHECKPOINT = TINY["2.6"] / "checkpoint"


def questions():
    wide = Image.open(REFERENCE / "images" / "img_b_640x448.png").convert("RGB").resize((1344, 700))
    return [
        [{"role": "user", "content": [wide, "Describe the image."]}],
        [{"role": "user", "content": [Image.open(REFERENCE / "images" / "img_b_640x448.png"), "What?"]}],
        [{"role": "user", "content": "A longer question without any image at all, to change the length."}],
    ]


def graphs_built() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def test_compile_option_values():
    tuned = {"encode": {"threads": 2, "compile": False}, "decode": {"threads": 2, "compile": True}}
    assert compile_parts("auto", tuned) == ("decode",)
    assert compile_parts("auto", None) == () and compile_parts(None, {}) == ()
    assert compile_parts("on", None) == compile_parts(True, None) == ("encode", "decode")
    assert compile_parts("off", tuned) == compile_parts(False, tuned) == ()
    assert compile_parts("encode", None) == ("encode",)
    with pytest.raises(ConfigError, match="compile: 'fast'"):
        compile_parts("fast", None)
    with pytest.raises(ConfigError, match="compile"):
        load(CHECKPOINT, compile="decoder")


@pytest.mark.parametrize("low_memory", [pytest.param(False, marks=pytest.mark.slow), True])  # faster: [True]
def test_compiled_model_answers_like_eager_and_compiles_only_at_load(low_memory):
    eager = load(CHECKPOINT, low_memory=low_memory, compile="off")
    compiled = load(CHECKPOINT, low_memory=low_memory, compile="on")
    assert compiled.compiled == ("encode", "decode") and compiled.compile_seconds > 0 and eager.compile_seconds == 0
    built = graphs_built()
    for messages in questions():
        expected = eager.generate(messages, max_new_tokens=8, min_new_tokens=8)
        result = compiled.generate(messages, max_new_tokens=8, min_new_tokens=8)
        assert result.token_ids == expected.token_ids
        assert result.timing_line().startswith(f"load {result.load_seconds:.2f} s | compile ")
    assert graphs_built() == built  # new prompt lengths, crop counts and cache sizes: no new graph


def test_quantized_layers_enter_the_compiled_graph_whole():
    eager = load(CHECKPOINT, compile="off")
    quantize_model(eager.model, QuantConfig(bits=4, group_size=32))
    expected = [eager.generate(m, max_new_tokens=8, min_new_tokens=8).token_ids for m in questions()[1:]]
    eager.compile(("decode",))
    assert eager.compiled == ("decode",)
    assert [eager.generate(m, max_new_tokens=8, min_new_tokens=8).token_ids for m in questions()[1:]] == expected
