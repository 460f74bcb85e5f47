"""`minicpmv generate`: greedy answer, --json fields, timing line, refusals with exit code 2."""

import json
import subprocess
import sys

from conftest import REFERENCE, TINY
from safetensors.torch import load_file

from minicpmv.cli import main

IMAGE = str(REFERENCE / "images" / "img_b_640x448.png")


def test_generate_json_matches_official_greedy_ids(capsys):
    for version in ("2.0", "2.5", "2.6"):
        assert (
            main(
                [
                    "generate",
                    "-m",
                    str(TINY[version] / "checkpoint"),
                    "--image",
                    IMAGE,
                    "-p",
                    "What is in the image?",
                    "-n",
                    "8",
                    "--json",
                ]
            )
            == 0
        )
        captured = capsys.readouterr()
        record = json.loads(captured.out)
        expected = load_file(TINY[version] / "case_single" / "expected.safetensors")
        assert record["token_ids"] == expected["greedy_ids"][0].tolist()
        assert record["prompt_token_ids"] == expected["input_ids"][0].tolist()
        assert isinstance(record["text"], str)
        assert "decode" in captured.err and "peak RSS" in captured.err


def test_generate_refusals_exit_2(tmp_path):
    checkpoint = str(TINY["2.6"] / "checkpoint")
    runs = [
        ["generate", "-m", checkpoint, "-p", "hi", "--top-p", "0"],
        ["generate", "-m", checkpoint, "-p", "hi", "--video", str(tmp_path / "missing.mp4")],
        ["generate", "-m", checkpoint, "-p", "hi", "--image", str(tmp_path / "missing.png")],
        ["generate", "-m", checkpoint, "-p", "hi", "-n", "0"],
    ]
    for argv in runs:
        assert main(argv) == 2, argv


def test_console_script_text_output():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "minicpmv",
            "generate",
            "-m",
            str(TINY["2.0"] / "checkpoint"),
            "--image",
            IMAGE,
            "-p",
            "What is in the image?",
            "-n",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "here述\x7f��ڭ�".strip()


def test_presets_seed_and_flags(capsys):
    checkpoint = str(TINY["2.5"] / "checkpoint")
    base = ["generate", "-m", checkpoint, "--image", IMAGE, "-p", "What is in the image?", "-n", "8", "--json"]
    assert main([*base, "--preset", "precise"]) == 0
    expected = load_file(TINY["2.5"] / "case_single" / "expected.safetensors")
    assert json.loads(capsys.readouterr().out)["token_ids"] == expected["beam3_rep1.2_ids"][0].tolist()
    runs = []
    for _ in range(2):
        assert main([*base, "--preset", "sampling", "--seed", "11", "-t", "1", "--temperature", "1.5"]) == 0
        runs.append(json.loads(capsys.readouterr().out)["token_ids"])
    assert runs[0] == runs[1]
