"""The llama.cpp LLM backend: `minicpmv export-gguf` writes the checkpoint's LLM (names and values
round-trip, Llama's rotary rows reordered and back), and `--llm-gguf` answers like our own LLM
with this package's embeddings and vision; wrong files and unsupported uses are refused."""

import json

import numpy as np
import pytest
import torch
from conftest import REFERENCE, TINY
from PIL import Image
from safetensors.torch import load_file

from minicpmv import load
from minicpmv.cli import main
from minicpmv.errors import CheckpointError, ConfigError

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from minicpmv.backends.gguf_export import (  # noqa: E402
    GGUF_NAMES,
    checkpoint_name,
    checkpoint_tensors,
    export_gguf,
    gguf_name,
    interleave_rope_rows,
    llm_config,
    write_gguf,
)

IMAGE = REFERENCE / "images" / "img_b_640x448.png"


def question():
    return [{"role": "user", "content": [Image.open(IMAGE), "Describe the image."]}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    return {
        (version, kind): export_gguf(TINY[version] / "checkpoint", folder / f"{version}-{kind}.gguf", kind)
        for version in ("2.6", "2.5", "4.5")
        for kind in ("f32", "q4_0")
    }


def test_name_table_round_trips():
    for pattern in GGUF_NAMES:
        name = pattern.format(i=7)
        assert checkpoint_name(gguf_name(name)) == name
    assert len(set(GGUF_NAMES.values())) == len(GGUF_NAMES)


@pytest.mark.parametrize("version", ["2.6", "2.5", "4.5"])
def test_exported_tensors_round_trip_to_the_checkpoint(exported, version):
    original = {
        k: v for k, v in load_file(TINY[version] / "checkpoint" / "model.safetensors").items() if k.startswith("llm.")
    }
    config = json.loads((TINY[version] / "checkpoint" / "config.json").read_text())
    reader = gguf.GGUFReader(str(exported[version, "f32"]))
    back = {}
    for tensor in reader.tensors:
        data = np.array(tensor.data).reshape([int(d) for d in reversed(tensor.shape)])
        name = checkpoint_name(tensor.name)
        if version == "2.5" and name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads"] if "q_proj" in name else config["num_key_value_heads"]
            data = interleave_rope_rows(data, heads, inverse=True)
        back[name] = torch.from_numpy(data.copy())
    assert set(back) == set(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor.float()), name


def test_rope_reorder_pairs_the_halves():
    rows = np.arange(8, dtype=np.float32)[:, None]  # one head of 8 rows: halves 0-3 and 4-7
    assert interleave_rope_rows(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize("version", ["2.6", "2.5", "4.5"])  # 4.5: llama.cpp's qwen3 with q/k norms
def test_llama_cpp_backend_answers_like_our_llm(exported, version):
    checkpoint = TINY[version] / "checkpoint"
    # the same float32 image features on both sides: the LLMs are compared (llama.cpp's float16
    # keys can flip a near tie of these random weights, whichever features they are given)
    ours = load(checkpoint, vision_dtype="float32")
    backend = load(checkpoint, llm_gguf=exported[version, "f32"], vision_dtype="float32")
    expected = ours.generate(question(), max_new_tokens=12, min_new_tokens=12)
    result = backend.generate(question(), max_new_tokens=12, min_new_tokens=12)
    assert result.token_ids == expected.token_ids and result.text == expected.text
    _, embeds = ours.prompt_embeddings(question())
    with torch.inference_mode():
        reference = ours.model.llm(embeds)[0]
        logits = backend.llm(embeds, cache=backend.llm.new_cache(1, embeds.shape[1]))[0]
    assert logits.shape == reference.shape
    assert (logits - reference).abs().max() < 1e-3 * reference.abs().max()  # llama.cpp keeps keys in float16
    streamed = "".join(backend.stream(question(), max_new_tokens=12, min_new_tokens=12))
    assert streamed == expected.text


def test_backend_reads_only_the_embeddings_of_the_llm(exported):
    for low_memory in (False, True):
        chat = load(TINY["2.6"] / "checkpoint", llm_gguf=exported["2.6", "q4_0"], low_memory=low_memory)
        answer = chat.generate(question(), max_new_tokens=6, min_new_tokens=6)
        assert len(answer.token_ids) == 6
        layers = chat.model.llm.model.layers
        assert all(p.is_meta for p in layers.parameters()) and not chat.model.llm.model.embed_tokens.weight.is_meta
        if low_memory:
            assert all(p.is_meta for p in chat.model.vpm.parameters())  # released after encoding


def test_unsupported_uses_and_wrong_files_are_refused(exported, tmp_path, capsys):
    with pytest.raises(ConfigError, match="vocab is 400 in the GGUF but 334 in the checkpoint"):
        load(TINY["2.6"] / "checkpoint", llm_gguf=_other_model(tmp_path))
    with pytest.raises(ConfigError, match="architecture is qwen2 in the GGUF but llama"):
        load(TINY["2.5"] / "checkpoint", llm_gguf=exported["2.6", "f32"])
    with pytest.raises(ConfigError, match="no such GGUF file"):
        load(TINY["2.6"] / "checkpoint", llm_gguf=tmp_path / "missing.gguf")
    backend = load(TINY["2.6"] / "checkpoint", llm_gguf=exported["2.6", "f32"])
    with pytest.raises(ConfigError, match="one sequence"):
        backend.generate(question(), preset="precise", max_new_tokens=4)
    with pytest.raises(ConfigError, match="one sequence"):
        backend.generate_batch([question(), question()], max_new_tokens=4)
    out = tmp_path / "x.gguf"
    assert main(["export-gguf", "-m", str(TINY["2.0"] / "checkpoint"), "-o", str(out)]) == 2
    assert "minicpm LLM has no llama.cpp export" in capsys.readouterr().err and not out.exists()
    assert main(["export-gguf", "-m", str(TINY["2.6"] / "checkpoint"), "-o", str(exported["2.6", "f32"])]) == 2
    assert "file exists" in capsys.readouterr().err


def _other_model(tmp_path):
    """A GGUF of another Qwen2 LLM: the bench's tiny random one, which differs in vocabulary only."""
    from minicpmv.bench import random_checkpoint

    return export_gguf(random_checkpoint("tiny", tmp_path), tmp_path / "other.gguf", "f32")


def test_cli_generate_with_the_backend(exported, capsys):
    argv = [
        "generate",
        "-m",
        str(TINY["2.6"] / "checkpoint"),
        "--image",
        str(IMAGE),
        "-p",
        "What is in the image?",
        "-n",
        "8",
        "--json",
    ]
    assert main(argv) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(argv + ["--llm-gguf", str(exported["2.6", "f32"])]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["token_ids"] == expected["token_ids"] and "decode" in captured.err


# --- Qwen3.5 (4.6/4.7) as llama.cpp's qwen35 -------------------------------------------------

V46 = REFERENCE / "minicpmv46_tiny" / "checkpoint"
V47 = REFERENCE / "minicpmv47_tiny" / "checkpoint"
MOE = REFERENCE / "minicpmv47_tiny" / "moe" / "checkpoint"  # 4 experts, top 2, a shared expert
CHECKPOINTS = {"4.6": V46, "4.7": V47, "4.7-moe": MOE}


@pytest.fixture(scope="module")
def qwen35(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen35")
    return {name: export_gguf(path, folder / f"{name}.gguf", "f32") for name, path in CHECKPOINTS.items()}


def test_qwen35_gguf_stores_llama_cpp_forms(qwen35):
    """Quirk: llama.cpp's qwen35 multiplies norms by w where Qwen3.5's zero-centred RMSNorm uses
    1 + w (the DeltaNet's gated norm is plain), stores A = -exp(A_log) and a (C, K) conv kernel;
    the query projection keeps its per-head [query, gate] rows."""
    stored = {
        t.name: np.array(t.data).reshape([int(d) for d in reversed(t.shape)])
        for t in gguf.GGUFReader(str(qwen35["4.6"])).tensors
    }
    original = {k: v.float().numpy() for k, v in load_file(V46 / "model.safetensors").items()}
    layer = "model.language_model.layers."
    assert np.array_equal(stored["blk.0.attn_norm.weight"], original[layer + "0.input_layernorm.weight"] + 1)
    assert np.array_equal(
        stored["blk.0.post_attention_norm.weight"], original[layer + "0.post_attention_layernorm.weight"] + 1
    )
    assert np.array_equal(stored["blk.1.attn_q_norm.weight"], original[layer + "1.self_attn.q_norm.weight"] + 1)
    assert np.array_equal(stored["output_norm.weight"], original["model.language_model.norm.weight"] + 1)
    assert np.array_equal(stored["blk.0.ssm_norm.weight"], original[layer + "0.linear_attn.norm.weight"])
    assert np.allclose(stored["blk.0.ssm_a"], -np.exp(original[layer + "0.linear_attn.A_log"]))
    assert np.array_equal(stored["blk.0.ssm_conv1d.weight"], original[layer + "0.linear_attn.conv1d.weight"][:, 0])
    assert np.array_equal(stored["blk.1.attn_q.weight"], original[layer + "1.self_attn.q_proj.weight"])
    assert "output.weight" not in stored  # tied: llama.cpp reads the head from token_embd
    reader = gguf.GGUFReader(str(qwen35["4.7"]))
    sections = reader.fields["qwen35.rope.dimension_sections"]
    assert [int(sections.parts[i][0]) for i in sections.data] == [2, 1, 1, 0]  # 4.7's interleaved M-RoPE
    assert int(reader.fields["qwen35.full_attention_interval"].parts[-1][0]) == 2


@pytest.mark.parametrize("version", list(CHECKPOINTS))
def test_llama_cpp_qwen35_answers_like_our_llm(qwen35, version):
    """llama.cpp's Gated DeltaNet and gated attention give our logits (its keys in float16) and
    our greedy ids: 4.6 with an image (plain positions, four M-RoPE rows written per token), 4.7
    on text (its canvas positions of an image are refused: llama.cpp masks attention by position);
    4.7's MoE through llama.cpp's router (softmax, top 2 renormalised) and shared expert."""
    checkpoint = CHECKPOINTS[version]
    messages = question() if version == "4.6" else [{"role": "user", "content": ["Describe a cat in ten words."]}]
    ours, backend = load(checkpoint), load(checkpoint, llm_gguf=qwen35[version])
    _, embeds, positions = ours.prompt_inputs(messages)
    with torch.inference_mode():
        reference = ours.model.llm(embeds, position_ids=positions)[0]
        logits = backend.llm(embeds, position_ids=positions, cache=backend.llm.new_cache(1, embeds.shape[1]))[0]
    assert (logits - reference).abs().max() < 1e-3 * reference.abs().max()
    expected = ours.generate(messages, max_new_tokens=12, min_new_tokens=12)
    assert backend.generate(messages, max_new_tokens=12, min_new_tokens=12).token_ids == expected.token_ids
    if version != "4.6":
        with pytest.raises(ConfigError, match="canvas positions"):
            backend.generate(question(), max_new_tokens=4)


def test_qwen35_moe_gguf_stacks_the_experts(qwen35):
    """Quirk: llama.cpp's qwen35moe holds a layer's routed experts as one (experts, rows, columns)
    tensor per projection where the checkpoint has one tensor per expert; the router and the
    shared expert's gate (a vector there, a (1, D) matrix here) stay float32."""
    reader = gguf.GGUFReader(str(qwen35["4.7-moe"]))
    stored = {t.name: np.array(t.data).reshape([int(d) for d in reversed(t.shape)]) for t in reader.tensors}
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    original = {k: v.float().numpy() for k, v in load_file(MOE / "model.safetensors").items()}
    layer = "model.language_model.layers.1.mlp."
    for projection in ("gate", "up", "down"):
        experts = np.stack([original[f"{layer}experts.{e}.{projection}_proj.weight"] for e in range(4)])
        assert np.array_equal(stored[f"blk.1.ffn_{projection}_exps.weight"], experts)
        assert np.array_equal(
            stored[f"blk.1.ffn_{projection}_shexp.weight"], original[f"{layer}shared_expert.{projection}_proj.weight"]
        )
    assert np.array_equal(stored["blk.1.ffn_gate_inp.weight"], original[layer + "gate.weight"])
    assert np.array_equal(stored["blk.1.ffn_gate_inp_shexp.weight"], original[layer + "shared_expert_gate.weight"][0])
    assert types["blk.1.ffn_gate_inp.weight"] == types["blk.1.ffn_gate_inp_shexp.weight"] == "F32"
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "qwen35moe"
    assert int(reader.fields["qwen35moe.expert_count"].parts[-1][0]) == 4
    assert int(reader.fields["qwen35moe.expert_used_count"].parts[-1][0]) == 2


def test_a_moe_export_missing_an_expert_is_refused(tmp_path):
    tensors = [(n, a) for n, a in checkpoint_tensors(MOE) if n != "llm.model.layers.0.mlp.experts.2.up_proj.weight"]
    with pytest.raises(CheckpointError, match="layer 0: 3 of 4 experts' up_proj"):
        write_gguf(tensors, llm_config(MOE), tmp_path / "moe.gguf", "f32")
    assert not (tmp_path / "moe.gguf").exists()
