"""Training under faults: a kill in every phase of a save (a first save and a re-save of the same
step) leaves `latest` naming a whole checkpoint and resumes to the weights of an unbroken run;
staging leftovers are cleared; the metrics log survives restarts and cut lines."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("yaml")

from conftest import TINY  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from training_data import make_dataset, resumable_train_args  # noqa: E402

from minicpmv.model.checkpoint import load_model  # noqa: E402
from minicpmv.training.checkpoints import latest_checkpoint, load_state  # noqa: E402

PYTHON = [sys.executable, "-m", "minicpmv"]
KILL = [sys.executable, str(Path(__file__).parent / "kill_during_save.py")]
FINAL = "checkpoint-000006/model.safetensors"


@pytest.fixture(scope="module")
def args(tmp_path_factory):
    return resumable_train_args(make_dataset(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def straight(args, tmp_path_factory):
    output = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(PYTHON + args + ["-o", str(output)], check=True, capture_output=True)
    return output


def assert_loadable(output: Path) -> Path:
    folder = latest_checkpoint(output)
    assert folder is not None
    load_model(folder)
    assert load_state(folder)["step"] == int(folder.name.split("-")[1])
    return folder


def assert_same_run(output: Path, straight: Path) -> None:
    expected, resumed = load_file(straight / FINAL), load_file(output / FINAL)
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    losses = [json.loads(line)["loss"] for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()] == losses
    assert not [p.name for p in output.iterdir() if p.name.startswith(".")]  # no staging leftovers


@pytest.mark.slow  # faster: test_training.py::test_killed_run_resumes_to_the_same_weights, test_files.py's recover tests
@pytest.mark.parametrize("phase", ["weights", "staged", "swapped", "latest"])
def test_kill_during_a_first_save(phase, args, straight, tmp_path):
    output = tmp_path / "run"
    crash = subprocess.run(KILL + [phase, "4"] + args + ["-o", str(output)], capture_output=True)
    assert crash.returncode == -9
    folder = assert_loadable(output)
    assert folder.name == "checkpoint-000002"  # `latest` moves only once step 4 is whole and in place
    subprocess.run(PYTHON + args + ["-o", str(output), "--resume"], check=True, capture_output=True)
    assert_same_run(output, straight)


@pytest.mark.slow  # faster: test_training.py::test_killed_run_resumes_to_the_same_weights, test_files.py's recover tests
@pytest.mark.parametrize("phase", ["staged", "aside", "swapped", "latest"])
def test_kill_while_saving_the_same_step_again(phase, args, straight, tmp_path):
    """`--resume` on a finished run saves its last step again: the defect was deleting the
    folder `latest` names before the new one was in (a kill there left no trainer state)."""
    output = tmp_path / "run"
    shutil.copytree(straight, output)
    crash = subprocess.run(KILL + [phase, "6"] + args + ["-o", str(output), "--resume"], capture_output=True)
    assert crash.returncode == -9
    assert assert_loadable(output).name == "checkpoint-000006"
    subprocess.run(PYTHON + args + ["-o", str(output), "--resume"], check=True, capture_output=True)
    assert_same_run(output, straight)


def test_a_restart_without_a_checkpoint_logs_once_and_cut_lines_do_not_stop_resume(args, straight, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    (output / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "lo')  # a killed first attempt
    (output / ".checkpoint-000002.staging-x1").mkdir()  # and its half save
    subprocess.run(PYTHON + args + ["-o", str(output), "--resume"], check=True, capture_output=True)
    assert_same_run(output, straight)


HOSTILE_RECORDS = [  # (id, record, the reason it is counted under)
    (
        "tag-to-number",
        {
            "image": {"<image_00>": 5},
            "conversations": [{"role": "user", "content": "<image_00> what?"}, {"role": "assistant", "content": "x"}],
        },
        "malformed",
    ),
    (
        "image-without-user",
        {"image": "shape0.png", "conversations": [{"role": "assistant", "content": "x"}]},
        "malformed",
    ),
    (
        "marker-in-answer",
        {
            "conversations": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "(<image>./</image>) here"},
            ]
        },
        "image_marker_text",
    ),
    (
        "unk-run-in-question",
        {
            "conversations": [
                {"role": "user", "content": "<image>" + "<unk>" * 64 + "</image>"},
                {"role": "assistant", "content": "x"},
            ]
        },
        "image_marker_text",
    ),
]


def test_hostile_records_are_skipped_and_counted(tmp_path):
    """Each record once stopped a run (TypeError, StopIteration, a shape mismatch)."""
    from minicpmv.training.recipes import recipe
    from minicpmv.training.run import run_training

    path = make_dataset(tmp_path / "data", count=4)
    records = json.loads(path.read_text())
    path.write_text(json.dumps(records + [{"id": name, **record} for name, record, _ in HOSTILE_RECORDS]))
    settings = {"max_steps": 2, "batch_size": 4, "max_length": 1024, "precision": "float32"}
    result = run_training(recipe("sft", settings), TINY["2.6"] / "checkpoint", path, tmp_path / "run", progress=False)
    expected: dict = {}
    for _, _, reason in HOSTILE_RECORDS:
        expected[reason] = expected.get(reason, 0) + 1
    assert result["skipped"] == expected


@pytest.mark.parametrize("content, words", [("[]", "no samples"), ('{"a": 1}', "expected a JSON list")])
def test_data_with_no_samples_is_a_one_line_error(content, words, tmp_path, capsys):
    """An empty list once spun at 100% CPU forever."""
    from minicpmv.cli import main

    data = tmp_path / "empty.json"
    data.write_text(content)
    code = main(
        [
            "train",
            "--recipe",
            "sft",
            "-m",
            str(TINY["2.6"] / "checkpoint"),
            "--data",
            str(data),
            "-o",
            str(tmp_path / "run"),
            "--max-steps",
            "1",
        ]
    )
    assert code == 2
    assert words in capsys.readouterr().err
