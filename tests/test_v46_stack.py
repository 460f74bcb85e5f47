"""4.6 / 4.7 across the stack: quantization (experts and DeltaNet projections included, routers
kept float), low-memory loading, training (sft and LoRA through the DeltaNet layers, 4.7's canvas
positions, no packing with a recurrence), inspect-image in both downsample modes."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REFERENCE
from safetensors.torch import load_file
from test_v46_parity import messages_of
from training_data import make_dataset, tiny_train_args

from minicpmv import load
from minicpmv.cli import main
from minicpmv.errors import ConfigError
from minicpmv.model.checkpoint import load_model
from minicpmv.quant.apply import QuantConfig, quantize_model
from minicpmv.quant.linear import Int4Linear, Int8Linear
from minicpmv.training.batching import padded_batch
from minicpmv.training.data import SampleBuilder

TINY46, TINY47 = REFERENCE / "minicpmv46_tiny", REFERENCE / "minicpmv47_tiny"
MOE = TINY47 / "moe"
IMAGE = str(REFERENCE / "images" / "v46_a_900x300.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("bits,kind,least_cosine", [(8, Int8Linear, 0.98), (4, Int4Linear, 0.8)])
def test_quantized_moe_keeps_routers_float_and_stays_close(bits, kind, least_cosine):
    model = quantize_model(load_model(MOE / "checkpoint"), QuantConfig(bits=bits, group_size=32))
    layers = dict(model.named_modules())
    assert isinstance(layers["llm.model.layers.0.mlp.experts.3.down_proj"], kind)
    assert isinstance(layers["llm.model.layers.0.linear_attn.in_proj_qkv"], kind)
    assert isinstance(layers["llm.model.layers.1.self_attn.q_proj"], kind)
    assert type(layers["llm.model.layers.0.mlp.gate"]) is torch.nn.Linear  # the router
    assert type(layers["llm.model.layers.0.mlp.shared_expert_gate"]) is torch.nn.Linear
    reference = load_model(MOE / "checkpoint")
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = (m.llm(m.llm.embed(ids)).flatten() for m in (reference, model))
    assert torch.nn.functional.cosine_similarity(a, b, 0) > least_cosine


@pytest.mark.parametrize("bits", ["4", "8"])
def test_quantize_cli_writes_official_names_and_the_result_answers(bits, tmp_path, capsys):
    out = tmp_path / f"int{bits}"
    assert main(["quantize", "-m", str(MOE / "checkpoint"), "-o", str(out), "--bits", bits, "--group-size", "32"]) == 0
    names = set(load_file(out / "model.safetensors"))
    assert "model.language_model.layers.0.mlp.experts.0.gate_proj.qweight" in names
    assert "model.language_model.layers.0.mlp.gate.weight" in names  # router: float, official name
    capsys.readouterr()
    assert main(["generate", "-m", str(out), "--image", IMAGE, "-p", "What is in the image?", "-n", "4", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    expected = load_file(MOE / "case_single_16x" / "expected.safetensors")
    assert record["prompt_token_ids"] == expected["input_ids"][0].tolist()
    assert len(record["token_ids"]) == 4


def test_low_memory_mode_gives_the_official_greedy_ids():
    chat = load(TINY47 / "checkpoint", low_memory=True, vision_dtype="float32")
    case = TINY47 / "case_single_16x"
    result = chat.generate(messages_of(case), preset="greedy", thinking=False, max_new_tokens=8, min_new_tokens=8)
    assert result.token_ids == load_file(case / "expected.safetensors")["greedy_ids"][0].tolist()


@pytest.mark.parametrize("checkpoint", [TINY46, MOE], ids=["4.6", "4.7-moe"])
@pytest.mark.parametrize("recipe", ["sft", "lora"])
def test_training_runs_through_the_deltanet_layers_and_the_result_answers(checkpoint, recipe, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main([*tiny_train_args(data, steps=2, recipe=recipe, checkpoint=checkpoint / "checkpoint"), "-o", str(out)])
        == 0
    )
    trained = next(out.glob("checkpoint-*"))
    if recipe == "lora":  # adapters on the DeltaNet projections too
        adapter = load_file(trained / "adapter_model.safetensors")
        assert any(".linear_attn.in_proj_qkv.lora_A" in name for name in adapter)
        assert main(["merge-lora", "-m", str(checkpoint / "checkpoint"), "--adapter", str(trained),
                     "-o", str(tmp_path / "merged")]) == 0  # fmt: skip
        trained = tmp_path / "merged"
    capsys.readouterr()
    assert main(["generate", "-m", str(trained), "--image", IMAGE, "-p", "What?", "-n", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[0])["token_ids"]) >= 1


def test_training_samples_carry_the_canvas_positions_of_inference():
    chat = load(TINY47 / "checkpoint", vision_dtype="float32")
    messages = [
        {"role": "user", "content": [{"type": "image", "image": IMAGE}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "A picture."},
    ]
    sample = SampleBuilder(chat.processor).build(messages)
    inputs = chat.processor(messages[:1], thinking=False)
    prompt = inputs.input_ids[0].tolist()
    # the same tokens up to the assistant's opener (inference adds the template's empty think block)
    shared = next(i for i, (a, b) in enumerate(zip(sample.input_ids, prompt)) if a != b)
    assert shared > int(inputs.image_bound[0][-1, 1])  # the whole image and the question
    assert torch.equal(sample.position_ids[:, :shared], inputs.position_ids[:, 0, :shared])
    batch = padded_batch([sample])
    assert batch.position_ids.shape == (3, 1, len(sample))


def test_packing_is_refused_with_recurrent_layers(data, tmp_path, capsys):
    args = tiny_train_args(data, steps=1, checkpoint=TINY46 / "checkpoint")
    assert main([*args, "--set", "packing=true", "-o", str(tmp_path / "run")]) == 2
    assert "packing" in capsys.readouterr().err


def test_packing_error_is_typed_in_the_api(data, tmp_path):
    from minicpmv.training.recipes import recipe
    from minicpmv.training.trainer import Trainer

    with pytest.raises(ConfigError, match="Gated DeltaNet"):
        Trainer(load_model(TINY46 / "checkpoint"), None, recipe("sft", {"packing": True}), tmp_path, TINY46)


@pytest.mark.parametrize("mode,tokens", [("16x", [70, 64, 64, 64]), ("4x", [252, 256, 256, 256])])
def test_inspect_image_counts_each_crops_merged_tokens(mode, tokens, capsys):
    assert main(["inspect-image", "--version", "4.6", IMAGE, "--downsample-mode", mode, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens_per_crop"] == tokens and report["unk_count"] == sum(tokens)
    assert report["downsample_mode"] == mode


def test_a_tied_head_gets_an_int8_copy_and_streaming_writes_the_same(tmp_path):
    """4.6/4.7 tie the head to the embeddings: quantized, the head is an int8 copy (decoding reads
    a quarter of the float bytes) and the table stays float for lookups; the streamed folder
    quantization writes what the in-memory one does."""
    from minicpmv.model.checkpoint import save_model, weight_files
    from minicpmv.quant.folder import quantize_checkpoint

    config = QuantConfig(bits=4, group_size=32)
    model = quantize_model(load_model(TINY46 / "checkpoint"), config)
    assert isinstance(model.llm.lm_head, Int8Linear)
    assert model.llm.model.embed_tokens.weight.dtype == torch.float32
    save_model(model, tmp_path / "in-memory")
    quantize_checkpoint(TINY46 / "checkpoint", tmp_path / "streamed", config)

    def tensors(folder):
        out = {}
        for path in set(weight_files(folder).values()):
            out.update(load_file(path))
        return out

    streamed, reference = tensors(tmp_path / "streamed"), tensors(tmp_path / "in-memory")
    assert set(streamed) == set(reference) and "lm_head.qweight" in reference
    assert all(torch.equal(streamed[name], reference[name]) for name in reference)
    reloaded = load_model(tmp_path / "streamed")
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(reloaded.llm(reloaded.llm.embed(ids)), model.llm(model.llm.embed(ids)))


def test_thinking_answers_come_back_as_reasoning_content():
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    from live_server import running

    from minicpmv.serving import ServerSettings
    from minicpmv.serving.protocol import split_reasoning

    chat = load(TINY47 / "checkpoint", vision_dtype="float32")
    question = [{"role": "user", "content": "Why is the sky blue?"}]
    expected = chat.generate(question, thinking=True, max_new_tokens=8)
    assert expected.text.startswith("<think>\n")  # the prompt opened the block, the answer shows it
    with running(chat, ServerSettings(model_name="tiny-4.7")) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        response = client.chat.completions.create(
            model="tiny-4.7",
            messages=question,
            max_tokens=8,
            extra_body={"chat_template_kwargs": {"enable_thinking": True}},
        )
    message = response.choices[0].message
    assert (message.model_extra["reasoning_content"], message.content) == split_reasoning(expected.text)


def test_downsample_mode_per_call_and_per_request():
    """One loaded model answers in either mode: the API's `downsample_mode` option and the
    server's `mm_processor_kwargs.downsample_mode` (vLLM's name) give each mode's official ids;
    the feature cache keeps the modes apart."""
    pytest.importorskip("fastapi")
    openai = pytest.importorskip("openai")
    from live_server import running

    from minicpmv.serving import ServerSettings

    chat = load(TINY46 / "checkpoint", vision_dtype="float32")
    options = {"preset": "greedy", "thinking": False, "max_new_tokens": 8, "min_new_tokens": 8}
    for mode in ("4x", "16x", "4x"):
        case = TINY46 / f"case_single_{mode}"
        result = chat.generate(messages_of(case), downsample_mode=mode, **options)
        assert result.token_ids == load_file(case / "expected.safetensors")["greedy_ids"][0].tolist(), mode
    assert chat.generate(messages_of(TINY46 / "case_single_16x"), **options).image_tokens == 262  # the default
    four = chat.generate(messages_of(TINY46 / "case_single_4x"), downsample_mode="4x", **options)
    with running(chat, ServerSettings(model_name="tiny-4.6")) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        question = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": _data_url(IMAGE)}},
                                                 {"type": "text", "text": "What is in the image?"}]}]  # fmt: skip
        body = {"chat_template_kwargs": {"enable_thinking": False}, "min_tokens": 8}
        answer = client.chat.completions.create(
            model="tiny-4.6",
            messages=question,
            max_tokens=8,
            temperature=0,
            extra_body={**body, "mm_processor_kwargs": {"downsample_mode": "4x"}},
        )
        assert answer.choices[0].message.content == four.text
        assert answer.usage.prompt_tokens == len(four.prompt_token_ids)
    with pytest.raises(ConfigError, match="has none"):
        load(REFERENCE / "minicpmv26_tiny" / "checkpoint").generate([{"role": "user", "content": "hi"}],
                                                                     downsample_mode="4x")  # fmt: skip


def _data_url(path: str) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()
