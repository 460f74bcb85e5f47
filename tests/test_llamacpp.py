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
from minicpmv.errors import ConfigError

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from minicpmv.backends.gguf_export import (  # noqa: E402
    GGUF_NAMES,
    checkpoint_name,
    export_gguf,
    gguf_name,
    interleave_rope_rows,
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
    ours = load(checkpoint)
    backend = load(checkpoint, llm_gguf=exported[version, "f32"])
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
