"""`torchrun --nproc-per-node 2` on CPU (gloo): DDP and FSDP give the loss curve and weights of
one process with the same global batch; an FSDP run resumes from its checkpoint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("yaml")

from conftest import TINY  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from training_data import MINICPMV, TORCHRUN, make_dataset, tiny_train_args  # noqa: E402

STEPS = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    data = make_dataset(root / "data", broken=True)
    common, torchrun = tiny_train_args(data, STEPS), TORCHRUN
    subprocess.run(
        [*MINICPMV, *common, "--batch-size", "4", "-o", str(root / "one")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    for name, extra in (("ddp", []), ("fsdp", ["--set", "distributed=fsdp", "--save-every", "3"])):
        subprocess.run(
            torchrun + common + ["--batch-size", "2", "-o", str(root / name), *extra],
            check=True,
            capture_output=True,
            timeout=300,
        )
    return root, common, torchrun


def losses(folder):
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def weights(folder):
    return load_file(folder / f"checkpoint-{STEPS:06d}" / "model.safetensors")


def assert_close_weights(a, b):
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_two_processes_match_one(runs, name):
    root, _, _ = runs
    one, two = losses(root / "one"), losses(root / name)
    assert len(one) == len(two) == STEPS
    assert torch.allclose(torch.tensor(one), torch.tensor(two), rtol=1e-4)
    assert_close_weights(weights(root / "one"), weights(root / name))


@pytest.mark.slow  # faster: test_two_processes_match_one[fsdp], test_training.py::test_killed_run_resumes_to_the_same_weights
def test_fsdp_run_resumes_from_its_checkpoint(runs):
    root, common, torchrun = runs
    resumed = root / "fsdp-resumed"
    resumed.mkdir()
    shutil.copytree(root / "fsdp" / "checkpoint-000003", resumed / "checkpoint-000003")
    (resumed / "latest").write_text("checkpoint-000003\n")
    subprocess.run(
        torchrun + common + ["--batch-size", "2", "-o", str(resumed), "--set", "distributed=fsdp", "--resume"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert_close_weights(weights(root / "fsdp"), weights(resumed))
    assert losses(resumed)[-3:] == pytest.approx(losses(root / "fsdp")[-3:], rel=1e-5)


@pytest.mark.slow  # faster: test_two_processes_match_one[fsdp], test_training.py::test_lora_trains_adapters_and_merge_keeps_the_logits
def test_lora_under_fsdp_matches_one_process_and_merges(runs):
    root, common, torchrun = runs
    lora = [arg if arg != "sft" else "lora" for arg in common]
    lora[lora.index(str(STEPS))] = "3"
    lora += ["--set", "lora_rank=4", "--set", "lora_dropout=0"]  # dropout draws differ per process
    subprocess.run(
        [sys.executable, "-m", "minicpmv", *lora, "--batch-size", "4", "-o", str(root / "lora-one")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    subprocess.run(
        torchrun + lora + ["--batch-size", "2", "--set", "distributed=fsdp", "-o", str(root / "lora-fsdp")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert losses(root / "lora-fsdp") == pytest.approx(losses(root / "lora-one"), rel=1e-4)
    from minicpmv.cli import main

    assert (
        main(
            [
                "merge-lora",
                "-m",
                str(TINY["2.6"] / "checkpoint"),
                "--adapter",
                str(root / "lora-fsdp" / "checkpoint-000003"),
                "-o",
                str(root / "lora-merged"),
            ]
        )
        == 0
    )
