"""The `dpo` recipe on the tiny 2.6 checkpoint: reference log-probs equal a fresh forward, the
first step's loss is log 2 (policy = reference), torchrun matches one process, a SIGKILLed run
resumes to the same weights, and dpo-lora trains only adapters."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("yaml")

from conftest import TINY  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from training_data import TORCHRUN, tiny_train_args  # noqa: E402

ASSETS = Path(__file__).resolve().parents[1] / "minicpmv" / "assets"
CHECKPOINT = TINY["2.6"] / "checkpoint"
PYTHON = [sys.executable, "-m", "minicpmv"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = []
    for n, image in enumerate(["example.png", "demo-scene.png"] * 3):
        rows.append(
            {
                "image_path": str(ASSETS / image),
                "question": f"Describe the image ({n}).",
                "chosen": "A red circle and a blue square." if n % 2 else "Two shapes.",
                "rejected": "A green star." if n % 2 else "Five purple triangles in a row.",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(pairs, steps=4, recipe="dpo"):
    return tiny_train_args(pairs, steps, recipe, CHECKPOINT) + ["--set", "warmup_ratio=0.3"]


def _metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_reference_logps_equal_a_fresh_forward(pairs, tmp_path):
    from minicpmv.model.checkpoint import load_model
    from minicpmv.training.data import SampleBuilder
    from minicpmv.training.dpo import PreferenceDataset, pair_logps, reference_logps
    from minicpmv.training.recipes import recipe
    from minicpmv.training.run import processor_for
    from minicpmv.training.trainer import World

    model = load_model(CHECKPOINT)
    dataset = PreferenceDataset(pairs, SampleBuilder(processor_for(recipe("dpo"), CHECKPOINT)))
    stored = reference_logps(model, dataset, tmp_path, None, World())
    assert json.loads((tmp_path / "reference_logps.json").read_text()) == {str(k): v for k, v in stored.items()}
    with torch.no_grad():
        chosen, rejected = pair_logps(model.eval(), [dataset[3]])
    assert stored[3] == [float(chosen[0]), float(rejected[0])]


def test_first_step_is_log_2_then_the_chosen_side_wins(pairs, tmp_path):
    subprocess.run(PYTHON + _args(pairs, steps=8) + ["-o", str(tmp_path)], check=True, capture_output=True, timeout=600)
    rows = _metrics(tmp_path)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and rows[0]["reward_margin"] == 0
    assert rows[-1]["loss"] < math.log(2) and rows[-1]["reward_accuracy"] == 1.0
    assert (tmp_path / "checkpoint-000008" / "model.safetensors").exists()


@pytest.mark.slow  # faster: test_training_distributed.py::test_two_processes_match_one (the same trainer under torchrun)
def test_two_processes_match_one(pairs, tmp_path):
    one = PYTHON + _args(pairs) + ["--batch-size", "2", "-o", str(tmp_path / "one")]
    two = [
        *TORCHRUN,
        *_args(pairs),
        "--batch-size",
        "1",
        "-o",
        str(tmp_path / "two"),
    ]
    for command in (one, two):
        subprocess.run(command, check=True, capture_output=True, timeout=600)
    losses = [[r["loss"] for r in _metrics(tmp_path / name)] for name in ("one", "two")]
    assert torch.allclose(torch.tensor(losses[0]), torch.tensor(losses[1]), rtol=1e-4)
    a, b = (load_file(tmp_path / name / "checkpoint-000004" / "model.safetensors") for name in ("one", "two"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3


@pytest.mark.slow  # faster: test_training.py::test_killed_run_resumes_to_the_same_weights (the same trainer and checkpoints)
def test_killed_run_resumes_to_the_same_weights(pairs, tmp_path):
    args = _args(pairs, steps=6) + ["--save-every", "2", "--batch-size", "2"]
    subprocess.run(PYTHON + args + ["-o", str(tmp_path / "straight")], check=True, capture_output=True, timeout=600)
    crash = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parent / "kill_during_save.py"),
            "weights",
            "4",
            *args,
            "-o",
            str(tmp_path / "killed"),
        ],
        capture_output=True,
        timeout=600,
    )
    assert crash.returncode == -9 and (tmp_path / "killed" / "latest").read_text().strip() == "checkpoint-000002"
    subprocess.run(
        PYTHON + args + ["-o", str(tmp_path / "killed"), "--resume"], check=True, capture_output=True, timeout=600
    )
    a, b = (load_file(tmp_path / name / "checkpoint-000006" / "model.safetensors") for name in ("straight", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _metrics(tmp_path / "killed")] == [r["loss"] for r in _metrics(tmp_path / "straight")]


@pytest.mark.slow  # faster: test_training.py::test_lora_trains_adapters_and_merge_keeps_the_logits
def test_dpo_lora_trains_only_adapters(pairs, tmp_path):
    pytest.importorskip("peft")
    run = subprocess.run(
        PYTHON + _args(pairs, steps=2, recipe="dpo-lora") + ["-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "vpm 0" in run.stdout and "llm 0" not in run.stdout
    assert _metrics(tmp_path)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
