"""`scripts/grow_llm.py` and `scripts/grow_queries.py`: a bigger model that starts out computing
what the old one did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import TINY
from PIL import Image
from safetensors.torch import load_file

from minicpmv.model.checkpoint import load_model
from minicpmv.processing.processor import MiniCPMVProcessor

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = TINY["2.6"] / "checkpoint"


def grow(output: Path, *args: str, script: str = "grow_llm.py") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), str(CHECKPOINT), str(output), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


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
    assert [path.name for path in tmp_path.iterdir()] == ["grown"]  # no half-written folder beside it


def test_every_second_layer_grows_by_half(tmp_path):
    done = grow(tmp_path / "grown", "--every", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "grown" / "config.json").read_text())["num_hidden_layers"] == 3
    weights = load_file(tmp_path / "grown" / "model.safetensors")
    assert not weights["llm.model.layers.2.self_attn.o_proj.weight"].any()  # the new one: after layer 1 of 2


def test_new_queries_follow_the_old_ones_whose_tokens_stay(tmp_path):
    done = grow(tmp_path / "grown", "--extra", "8", script="grow_queries.py")
    assert done.returncode == 0, done.stderr[-2000:]
    old_queries = json.loads((CHECKPOINT / "config.json").read_text())["query_num"]
    assert json.loads((tmp_path / "grown" / "config.json").read_text())["query_num"] == old_queries + 8
    processor = MiniCPMVProcessor.from_pretrained(tmp_path / "grown")  # both files agree, or this raises
    assert processor.config.query_num == old_queries + 8
    old, new = load_model(CHECKPOINT).eval(), load_model(tmp_path / "grown").eval()
    image = processor.encode_images([Image.new("RGB", (300, 200), (200, 40, 40))])[0]
    with torch.no_grad():
        before = old.get_image_features(image.crops, image.tgt_sizes)
        after = new.get_image_features(image.crops, image.tgt_sizes)
    assert after.shape == (before.shape[0], old_queries + 8, before.shape[2])
    # equal up to rounding: a GEMM over more query rows may block its sums differently (AVX2, 1 thread)
    torch.testing.assert_close(after[:, :old_queries], before, rtol=1e-5, atol=1e-6)
    assert [path.name for path in tmp_path.iterdir()] == ["grown"]


def test_growing_into_an_existing_folder_or_by_nothing_is_refused(tmp_path):
    (tmp_path / "taken").mkdir()
    assert grow(tmp_path / "taken", script="grow_queries.py").returncode == 2
    assert (
        grow(tmp_path / "new", "--extra", "0", script="grow_queries.py").returncode == 2
        and not (tmp_path / "new").exists()
    )
