"""The official int4 checkpoints' format (bitsandbytes NF4, double quantization, transformers'
Linear4bit state dict): dequantized here with plain torch, checked against bitsandbytes' own
dequantization (tests/fixtures/bnb, written by tests/fixtures/make_bnb_fixture.py with
bitsandbytes), loaded on a CPU, and converted to our int4."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minicpmv import load
from minicpmv.cli import main
from minicpmv.quant.bnb import NF4, dequantize, quant_state_names

BNB = Path(__file__).parent / "fixtures" / "bnb"


def test_nf4_dequantization_equals_bitsandbytes():
    """Rule: w = quant_map[code] * absmax[block], two codes a byte (high nibble first), absmax
    itself 8-bit with its own blocks and offset (double quantization); quant_map is NF4's table."""
    stored = load_file(BNB / "checkpoint" / "model.safetensors")
    expected = load_file(BNB / "dequantized_by_bitsandbytes.safetensors")
    assert len(expected) == 16
    for name, reference in expected.items():
        state = {key[len(name) + 1 :]: stored[key] for key in quant_state_names(name, stored)}
        assert torch.equal(dequantize(stored[name], state, name), reference), name
        assert torch.allclose(state["quant_map"], torch.tensor(NF4))


def _dequantized_folder(tmp_path) -> Path:
    """The fixture with every NF4 weight replaced by its dequantized value: a plain bf16 model."""
    stored = load_file(BNB / "checkpoint" / "model.safetensors")
    plain = {}
    for name, tensor in stored.items():
        state_names = quant_state_names(name, stored)
        if ".weight." in name and not name.endswith(".weight"):
            continue  # quant-state tensors
        if state_names:
            state = {key[len(name) + 1 :]: stored[key] for key in state_names}
            tensor = dequantize(tensor, state, name).to(torch.bfloat16)
        plain[name] = tensor
    folder = tmp_path / "plain"
    shutil.copytree(BNB / "checkpoint", folder)
    save_file(plain, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_an_nf4_checkpoint_loads_and_answers_as_its_dequantized_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICPMV_CACHE_DIR", str(tmp_path / "cache"))
    question = [{"role": "user", "content": "What is in the image?"}]
    nf4 = load(BNB / "checkpoint")  # converted once into the cache, bf16 linears
    plain = load(_dequantized_folder(tmp_path))
    assert nf4.generate(question, max_new_tokens=8).token_ids == plain.generate(question, max_new_tokens=8).token_ids
    ids = torch.randint(0, 300, (1, 16))
    with torch.inference_mode():
        a, b = nf4.model.llm(nf4.model.llm.embed(ids)), plain.model.llm(plain.model.llm.embed(ids))
    # the same bf16 weights; the converted model's linears run our bf16 kernels, the plain one F.linear
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert len(list((tmp_path / "cache" / "converted").iterdir())) == 1
    load(BNB / "checkpoint")  # reused, not converted again
    assert len(list((tmp_path / "cache" / "converted").iterdir())) == 1


def test_quantize_turns_an_nf4_checkpoint_into_our_int4(tmp_path, capsys):
    out = tmp_path / "int4"
    assert main(["quantize", "-m", str(BNB / "checkpoint"), "-o", str(out), "--bits", "4", "--group-size", "32"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "minicpmv-weight-only"
    assert not any("absmax" in name for name in load_file(out / "model.safetensors"))
    capsys.readouterr()
    assert main(["generate", "-m", str(out), "-p", "hi", "-n", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"]


@pytest.mark.parametrize("bad", ["shape", "quant_map"])
def test_a_broken_quant_state_is_a_clear_error(bad):
    from minicpmv.errors import CheckpointError

    stored = load_file(BNB / "checkpoint" / "model.safetensors")
    name = "llm.model.layers.0.self_attn.q_proj.weight"
    state = {key[len(name) + 1 :]: stored[key] for key in quant_state_names(name, stored)}
    if bad == "quant_map":
        state["quant_map"] = state["quant_map"] * 2
    else:
        info = json.loads(bytes(state["quant_state.bitsandbytes__nf4"].tolist()).decode())
        info["shape"] = [4096, 4096]
        state["quant_state.bitsandbytes__nf4"] = torch.tensor(list(json.dumps(info).encode()), dtype=torch.uint8)
    with pytest.raises(CheckpointError, match=name):
        dequantize(stored[name], state, name)
