"""`scripts/grow_llm.py`: a deeper LLM that starts out computing what the old one did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from conftest import TINY
from minicpmv.model.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = TINY["2.6"] / "checkpoint"


def grow(output: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "grow_llm.py"), str(CHECKPOINT), str(output), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_grown_llm_has_twice_the_layers_and_the_same_answers(tmp_path):
    done = grow(tmp_path / "grown")
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and config["vision_config"]["num_hidden_layers"] == 2
    old, new = load_file(CHECKPOINT / "model.safetensors"), load_file(tmp_path / "grown" / "model.safetensors")
    layer = "llm.model.layers.{}.{}"
    for part in ("self_attn.q_proj.weight", "mlp.up_proj.weight", "self_attn.o_proj.weight"):
        assert torch.equal(new[layer.format(2, part)], old[layer.format(1, part)])  # old layer 1 is new layer 2
    assert torch.equal(new[layer.format(3, "self_attn.q_proj.weight")], old[layer.format(1, "self_attn.q_proj.weight")])
    assert not new[layer.format(3, "mlp.down_proj.weight")].any() and old[layer.format(1, "mlp.down_proj.weight")].any()
    assert all(torch.equal(new[name], old[name]) for name in old if not name.startswith("llm.model.layers."))
    small, big = load_model(CHECKPOINT), load_model(tmp_path / "grown")
    tokens = torch.randint(0, small.config.llm.vocab_size, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(small.llm(small.llm.embed(tokens)), big.llm(big.llm.embed(tokens)), atol=1e-5)
    assert not (tmp_path / "grown.partial").exists()


def test_every_second_layer_grows_by_half(tmp_path):
    done = grow(tmp_path / "grown", "--every", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "grown" / "config.json").read_text())["num_hidden_layers"] == 3
    weights = load_file(tmp_path / "grown" / "model.safetensors")
    assert not weights["llm.model.layers.2.self_attn.o_proj.weight"].any()  # the new one: after layer 1 of 2
