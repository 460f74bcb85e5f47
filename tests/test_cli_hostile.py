"""The CLI on broken checkpoints, bad flags and unwritable outputs: one line naming the problem and
exit code 2, never a traceback; and commands that write never damage their inputs."""

from __future__ import annotations

import errno
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY
from safetensors.torch import load_file

from minicpmv.cli import main

CHECKPOINT = TINY["2.6"] / "checkpoint"
ASK = ["-p", "hi", "-n", "2"]


def variant(tmp_path: Path, change) -> Path:
    folder = tmp_path / "checkpoint"
    shutil.copytree(CHECKPOINT, folder)
    change(folder)
    return folder


def edit_json(name: str, **fields):
    def change(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**data, **fields}))

    return change


def edit_header(edit):
    """Rewrite model.safetensors' JSON header with `edit(header)`, the data left as it is."""

    def change(folder: Path) -> None:
        path = folder / "model.safetensors"
        raw = path.read_bytes()
        length = struct.unpack("<Q", raw[:8])[0]
        header = json.dumps(edit(json.loads(raw[8 : 8 + length]))).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + raw[8 + length :])

    return change


def first_tensor(**fields):
    def edit(header: dict) -> dict:
        name = next(key for key in header if key != "__metadata__")
        header[name].update(fields)
        return header

    return edit


def fails(capsys, argv: list[str], *words: str) -> str:
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    for word in words:
        assert word in error, error
    return error


@pytest.mark.parametrize(
    "change, words",
    [
        (edit_json("config.json", hidden_size="64"), ["hidden_size", "positive integer"]),
        (edit_json("config.json", num_hidden_layers=2.5), ["num_hidden_layers"]),
        (edit_json("config.json", vision_config=[1, 2]), ["vision_config: expected an object"]),
        (edit_header(lambda header: [1, 2]), ["header is not a JSON object"]),
        (edit_header(first_tensor(shape=[-1, 4])), ["is not a list of sizes >= 0"]),
        (edit_header(first_tensor(shape=[2**40, 2**40])), ["bytes for shape [1099511627776"]),
        (edit_header(first_tensor(dtype="I32")), ["stored as int32, expected floating point"]),  # float32 bytes
        (edit_header(first_tensor(data_offsets=[0, 10**12])), ["past its end"]),
        (
            edit_json("tokenizer_config.json", chat_template="{% for i in range(10**9) %}x{% endfor %}"),
            ["chat_template failed to render"],
        ),
        (
            edit_json(
                "tokenizer_config.json", chat_template="{% for i in range(99999) %}" + "x" * 100 + "{% endfor %}"
            ),
            ["chat_template failed to render", "characters"],
        ),
    ],
)
def test_broken_checkpoints_are_one_line_errors(change, words, tmp_path, capsys):
    fails(capsys, ["generate", "-m", str(variant(tmp_path, change)), *ASK], *words)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["generate", "-m", str(CHECKPOINT), *ASK, "-t", "-1"], ["--threads must be at least 1"]),
        (["generate", "-m", str(CHECKPOINT), *ASK, "--device", "bogus"], ["--device 'bogus' is not a device name"]),
        (["generate", "-m", str(CHECKPOINT), *ASK, "--temperature", "nan"], ["temperature"]),
        (["generate", "-m", str(CHECKPOINT), *ASK, "--seed", str(2**64)], ["seed"]),
        (["serve", "-m", str(CHECKPOINT), "--port", "99999"], ["--port must be between 0 and 65535"]),
        (["serve", "-m", str(CHECKPOINT), "--max-body-mb", "nan"], ["--max-body-mb must be positive"]),
    ],
)
def test_bad_flags_are_one_line_errors(argv, words, capsys):
    fails(capsys, argv, *words)


@pytest.fixture
def train_args(tmp_path):
    data = Path(__file__).resolve().parents[1] / "examples" / "train.json"
    return ["train", "--recipe", "sft", "-m", str(CHECKPOINT), "--data", str(data), "--max-steps", "1"]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--lr", "nan"], ["learning_rate must be a number"]),
        (["--set", "lora_dropout=2"], ["lora_dropout"]),
        (["--set", "warmup_ratio=-1"], ["warmup_ratio"]),
    ],
)
def test_bad_training_settings_are_refused_before_training(extra, words, train_args, tmp_path, capsys):
    fails(capsys, train_args + ["-o", str(tmp_path / "run"), *extra], *words)
    assert not (tmp_path / "run" / "latest").exists()


def test_a_binary_recipe_file_is_one_line(train_args, tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_bytes(b"\x00\x01binary")
    fails(capsys, train_args + ["-o", str(tmp_path / "run"), "--config", str(config)], "recipe file")


@pytest.mark.parametrize(
    "command",
    [
        lambda out: [
            "train",
            "--recipe",
            "sft",
            "-m",
            str(CHECKPOINT),
            "--data",
            str(Path(__file__).resolve().parents[1] / "examples" / "train.json"),
            "--max-steps",
            "1",
            "-o",
            out,
        ],
        lambda out: ["synth", "-o", out, "--train", "2", "--validation", "0", "--test", "0"],
        lambda out: ["quantize", "-m", str(CHECKPOINT), "-o", out],
        lambda out: ["export-gguf", "-m", str(CHECKPOINT), "-o", out + "/model.gguf"],
        lambda out: ["eval", "run", "--benchmark", "demo", "--limit", "1", "-o", out],
    ],
)
def test_an_output_that_is_a_file_is_one_line_before_any_work(command, tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("mine")
    fails(capsys, command(str(target)))
    assert target.read_text() == "mine"


def test_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import minicpmv.quant.stream as stream

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stream, "write_tensors", no_space)  # the shard writer quantize uses
    fails(capsys, ["quantize", "-m", str(CHECKPOINT), "-o", str(tmp_path / "q")], "No space left on device")
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".q*"))  # nothing half written left


# ---- commands that write never damage their inputs ---------------------------------------------


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from minicpmv.training.recipes import recipe
    from minicpmv.training.run import run_training

    output = tmp_path_factory.mktemp("lora") / "run"
    data = Path(__file__).resolve().parents[1] / "examples" / "train.json"
    settings = {"max_steps": 1, "lora_rank": 4, "lora_alpha": 8, "max_length": 1024, "precision": "float32"}
    run_training(recipe("lora", settings), CHECKPOINT, data, output, progress=False)
    return output


def test_merge_lora_onto_its_base_is_refused_and_the_base_kept(adapter, tmp_path, capsys):
    """`merge-lora -m B --adapter A -o B` once overwrote B's weights, then crashed."""
    base = tmp_path / "base"
    shutil.copytree(CHECKPOINT, base)
    before = load_file(base / "model.safetensors")
    fails(capsys, ["merge-lora", "-m", str(base), "--adapter", str(adapter), "-o", str(base)], "is or holds the base")
    fails(capsys, ["merge-lora", "-m", str(base), "--adapter", str(adapter), "-o", str(tmp_path)], "is or holds")
    after = load_file(base / "model.safetensors")
    assert all((before[name] == after[name]).all() for name in before)


def test_merge_lora_needs_force_for_a_non_empty_output(adapter, tmp_path, capsys):
    output = tmp_path / "merged"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    fails(capsys, ["merge-lora", "-m", str(CHECKPOINT), "--adapter", str(adapter), "-o", str(output)], "--force")
    assert (output / "notes.txt").read_text() == "mine"
    assert main(["merge-lora", "-m", str(CHECKPOINT), "--adapter", str(adapter), "-o", str(output), "--force"]) == 0
    assert (output / "model.safetensors").exists() and not (output / "notes.txt").exists()


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda config: config.pop("lora_alpha"), ["lora_alpha must be a number"]),
        (lambda config: config.update(r=0), ["r must be a positive integer"]),
    ],
)
def test_broken_adapters_are_one_line(change, words, adapter, tmp_path, capsys):
    broken = tmp_path / "adapter"
    shutil.copytree(adapter / (adapter / "latest").read_text().strip(), broken)
    config = json.loads((broken / "adapter_config.json").read_text())
    change(config)
    (broken / "adapter_config.json").write_text(json.dumps(config))
    fails(capsys, ["merge-lora", "-m", str(CHECKPOINT), "--adapter", str(broken), "-o", str(tmp_path / "m")], *words)


def test_a_truncated_adapter_is_one_line(adapter, tmp_path, capsys):
    broken = tmp_path / "adapter"
    shutil.copytree(adapter / (adapter / "latest").read_text().strip(), broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    fails(
        capsys,
        ["merge-lora", "-m", str(CHECKPOINT), "--adapter", str(broken), "-o", str(tmp_path / "m")],
        "adapter_model.safetensors: unreadable",
    )


def test_quantizing_a_quantized_folder_is_refused(tmp_path, capsys):
    """int8 -> int4 once exited 0 and wrote a folder that did not load."""
    assert main(["quantize", "-m", str(CHECKPOINT), "-o", str(tmp_path / "int8"), "--bits", "8"]) == 0
    fails(
        capsys, ["quantize", "-m", str(tmp_path / "int8"), "-o", str(tmp_path / "int4")], "already quantized (8 bits)"
    )
    assert not (tmp_path / "int4").exists()


def test_help_and_argument_errors_import_no_torch():
    """`--help` and argparse errors answer before torch is imported (lazy imports); loading a
    model does not import torch._dynamo (the meta-device embeddings skip their init)."""
    code = (
        "import sys\nfrom minicpmv.cli import main\n"
        "for argv in (['--help'], ['generate', '--bogus'], ['inspect-image', '--help']):\n"
        "    try: main(argv)\n    except SystemExit: pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "import minicpmv\nfrom minicpmv.bundled import demo_model_path\nminicpmv.load(demo_model_path())\n"
        "assert 'torch._dynamo' not in sys.modules, 'dynamo imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]


def test_images_and_options_are_checked_before_the_model_loads(tmp_path, capsys):
    """A bad image or option is reported first: the model path here does not even exist."""
    missing_model = str(tmp_path / "no-model")
    runs = [
        (["generate", "-m", missing_model, "-p", "hi", "--image", str(tmp_path / "no.png")], "no.png"),
        (["generate", "-m", missing_model, "-p", "hi", "--top-p", "0"], "top_p"),
        (["generate", "-m", missing_model, "-p", "hi", "--video", str(tmp_path / "no.mp4")], "no.mp4"),
        (["chat", "-m", missing_model, "--temperature", "-1"], "temperature"),
    ]
    for argv, named in runs:
        assert main(argv) == 2, argv
        assert named in capsys.readouterr().err, argv


def test_the_default_thread_count_leaves_busy_cores_alone(monkeypatch):
    """No -t: the cores the 1-minute load average leaves free, at least one."""
    import os

    from minicpmv.cpu import idle_threads

    monkeypatch.setattr(os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    assert idle_threads(2) == 1 and idle_threads(8) == 7
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert idle_threads(4) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))
    assert idle_threads(4) == 4
