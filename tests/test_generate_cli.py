"""`minicpmv generate`: greedy answer, --json fields, timing line, refusals with exit code 2."""

import json
import re
import subprocess
import sys

from conftest import REFERENCE, TINY
from safetensors.torch import load_file

from minicpmv.cli import main

IMAGE = str(REFERENCE / "images" / "img_b_640x448.png")


def test_generate_json_matches_official_greedy_ids(capsys):
    for version in ("1.0", "2.0", "2.5", "2.6", "4.5"):
        messages = json.loads((TINY[version] / "case_single" / "messages.json").read_text())
        turn = messages[0][0] if isinstance(messages[0], list) else messages[0]
        image = str(REFERENCE / turn["content"][0]["image"])
        assert (
            main(
                [
                    "generate",
                    "-m",
                    str(TINY[version] / "checkpoint"),
                    "--image",
                    image,
                    "-p",
                    "What is in the image?",
                    "-n",
                    "8",
                    "--vision-dtype",
                    "float32",  # the official float32 greedy ids (auto may be lossy: bf16 or int8)
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
        assert re.search(
            r"first token \d+\.\d\d s \| total \d+\.\d\d s \| (1 thread|(?!1 )\d+ threads) \|", captured.err
        )


def test_generate_thinking_flag_gives_the_official_thinking_answer(capsys):
    """4.5 quirk: --thinking ends the prompt in "<think>\\n" and the answer shows it first."""
    checkpoint = str(TINY["4.5"] / "checkpoint")
    argv = ["generate", "-m", checkpoint, "--image", IMAGE, "-p", "What is in the image?", "-n", "8", "--json"]
    assert main([*argv, "--thinking"]) == 0
    record = json.loads(capsys.readouterr().out)
    expected = load_file(TINY["4.5"] / "case_single_thinking" / "expected.safetensors")
    official = json.loads((TINY["4.5"] / "case_single_thinking" / "expected.json").read_text())
    assert record["prompt_token_ids"] == expected["input_ids"][0].tolist()
    assert record["token_ids"] == expected["greedy_ids"][0].tolist()
    assert record["text"] == official["official_chat_outputs"]["chat_greedy_num_beams1_rep1.0"]
    assert main([*argv[:-1], "--thinking"]) == 0  # streamed: the prefix comes first
    assert capsys.readouterr().out.startswith("<think>\n")
    assert main(["generate", "-m", str(TINY["2.6"] / "checkpoint"), "-p", "hi", "--thinking"]) == 2


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
