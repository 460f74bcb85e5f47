"""Checkpoint folders: exact key sets, lossless save/load round trips, a real-size model built on
the meta device, and a clear typed error (CLI: exit 2, one line) for each kind of bad folder."""

import json
import shutil

import pytest
import torch
from conftest import TINY
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from minicpmv import CheckpointError, ConfigError
from minicpmv.cli import main
from minicpmv.cli.info import info
from minicpmv.model.checkpoint import load_model, save_model
from minicpmv.model.config import OFFICIAL_ARCHITECTURES, MiniCPMVConfig
from minicpmv.model.minicpmv import MiniCPMV

VERSIONS = list(TINY)


@pytest.mark.parametrize("version", VERSIONS)
def test_model_names_equal_checkpoint_names(version):
    path = TINY[version] / "checkpoint" / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        names = set(f.keys())
    model = load_model(TINY[version] / "checkpoint")
    assert set(model.state_dict()) == names


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("shard_bytes", [4 << 30, 400_000])
def test_save_load_round_trip_is_lossless(version, shard_bytes, tmp_path):
    model = load_model(TINY[version] / "checkpoint")
    save_model(model, tmp_path, max_shard_bytes=shard_bytes)
    if shard_bytes < 4 << 30:
        assert (tmp_path / "model.safetensors.index.json").exists()
    again = load_model(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    original = load_file(TINY[version] / "checkpoint" / "model.safetensors")
    assert set(original) == set(again.state_dict())
    assert MiniCPMVConfig.from_pretrained(tmp_path).version == version


def test_bfloat16_load():
    model = load_model(TINY["2.6"] / "checkpoint", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "version,tensors,low,high",
    [
        ("2.6", 789, 8.0e9, 8.2e9),
        ("2.5", 741, 8.4e9, 8.6e9),
        ("2.0", 694, 3.3e9, 3.5e9),
        # the released index files: 1.0 total_size 6869931584 bytes of bf16, 4.5 17391790560
        ("1.0", 694, 3_434_965_792, 3_434_965_792),
        ("4.5", 849, 8_695_895_280, 8_695_895_280),
        ("4.6", 780, 1.25e9, 1.35e9),  # released as "1.3B" (SigLIP2-400M + Qwen3.5-0.8B)
        # 4.7 1B: 4.6's shapes with an untied head, released as "1.55 B"
        ("4.7", 780, 1.545e9, 1.555e9),
    ],
)
def test_real_size_architectures_on_meta_device(version, tensors, low, high, capsys):
    """The released shapes build without allocating memory; tensor counts are the spec's (§4.4)
    and, for 1.0 and 4.5, the released index files' (their parameter counts exactly)."""
    report = info(architecture=version, as_json=True)
    assert json.loads(capsys.readouterr().out) == report
    assert report["tensors"] == tensors and low <= report["parameters"] <= high
    with torch.device("meta"):
        model = MiniCPMV(MiniCPMVConfig.from_dict(OFFICIAL_ARCHITECTURES[version]))
    assert all(p.is_meta for p in model.parameters())


def copy_checkpoint(tmp_path, version="2.6"):
    folder = tmp_path / "ckpt"
    shutil.copytree(TINY[version] / "checkpoint", folder)
    return folder


def edit_weights(folder, change):
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")


def edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def bad_checkpoints(tmp_path):
    """(label, folder, error type, message fragment) for each kind of broken checkpoint."""
    cases = []

    def case(label, error, fragment, make):
        folder = copy_checkpoint(tmp_path / label.replace(" ", "_"))
        make(folder)
        cases.append((label, folder, error, fragment))

    case(
        "missing tensor",
        CheckpointError,
        "missing tensor llm.model.norm.weight",
        lambda f: edit_weights(f, lambda t: t.pop("llm.model.norm.weight")),
    )
    case(
        "unexpected tensor",
        CheckpointError,
        "unexpected tensor llm.extra.weight",
        lambda f: edit_weights(f, lambda t: t.update({"llm.extra.weight": torch.zeros(2)})),
    )
    case(
        "wrong shape",
        CheckpointError,
        "tensor resampler.query has shape (32, 128)",
        lambda f: edit_weights(f, lambda t: t.update({"resampler.query": torch.zeros(32, 128)})),
    )
    case(
        "truncated file",
        CheckpointError,
        "model.safetensors",
        lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:100_000]),
    )
    case("no weights", CheckpointError, "no model.safetensors", lambda f: (f / "model.safetensors").unlink())
    case(
        "missing shard",
        CheckpointError,
        "shard listed in model.safetensors.index.json is missing",
        lambda f: (
            (f / "model.safetensors").unlink(),
            (f / "model.safetensors.index.json").write_text(
                json.dumps({"weight_map": {"llm.lm_head.weight": "model-00001-of-00002.safetensors"}})
            ),
        ),
    )
    case("missing config", ConfigError, "config.json: missing", lambda f: (f / "config.json").unlink())
    case("broken config", ConfigError, "config.json: not valid JSON", lambda f: (f / "config.json").write_text("{oops"))
    case(
        "not minicpmv",
        ConfigError,
        "model_type: 'llama' is not a MiniCPM-V model",
        lambda f: edit_config(f, lambda c: (c.pop("version"), c.update(model_type="llama"))),
    )
    case(
        "unsupported version",
        ConfigError,
        "MiniCPM-V 4.0 is not supported",
        lambda f: edit_config(f, lambda c: c.update(version=4.0)),
    )
    case(
        "vision depth mismatch",
        ConfigError,
        "drop_vision_last_layer: config.json (True) implies 1 vision layers but the weights have 2",
        lambda f: edit_config(f, lambda c: c.update(drop_vision_last_layer=True)),
    )
    case(
        "bad field",
        ConfigError,
        "num_hidden_layers: must be a positive integer",
        lambda f: edit_config(f, lambda c: c.update(num_hidden_layers="two")),
    )
    return cases


def test_each_bad_checkpoint_gives_a_typed_error_naming_the_problem(tmp_path):
    cases = bad_checkpoints(tmp_path)
    assert len(cases) >= 10
    for label, folder, error, fragment in cases:
        with pytest.raises(error) as info:
            load_model(folder)
        assert fragment in str(info.value), (label, str(info.value))
    with pytest.raises(CheckpointError, match="not a folder"):
        load_model(tmp_path / "does-not-exist")


def test_cli_exits_2_with_one_line_for_each_bad_checkpoint(tmp_path, capsys):
    for label, folder, _, fragment in bad_checkpoints(tmp_path):
        assert main(["generate", "-m", str(folder), "-p", "hi"]) == 2, label
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and fragment in err and "Traceback" not in err, (label, err)


def test_progress_bar_on_request_and_silent_by_default(capsys):
    load_model(TINY["2.0"] / "checkpoint", progress=True)
    assert "loading weights" in capsys.readouterr().err
    load_model(TINY["2.0"] / "checkpoint")  # small checkpoint, not a terminal: no bar
    assert "loading weights" not in capsys.readouterr().err


@pytest.mark.parametrize("version", ["1.0", "4.5"])
def test_real_size_tensor_names_are_the_official_ones(version):
    """The real-size names, layer numbers aside, are those of the fixture checkpoint the official
    code wrote (4.5: q_norm / k_norm, no resampler pos_embed; 1.0: timm names, resampler.pos_embed)."""
    import re

    def pattern(names):
        return {re.sub(r"\.\d+\.", ".N.", name) for name in names}

    with torch.device("meta"):
        model = MiniCPMV(MiniCPMVConfig.from_dict(OFFICIAL_ARCHITECTURES[version]))
    official = load_file(TINY[version] / "checkpoint" / "model.safetensors")
    assert pattern(model.state_dict()) == pattern(official)
