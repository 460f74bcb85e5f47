"""Every `minicpmv ...` command in the README's bash blocks runs and succeeds."""

import re
import shlex
from pathlib import Path

from minicpmv.cli import main

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("minicpmv ")]


def test_readme_cli_commands_run(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    commands = readme_commands()
    assert len(commands) >= 3
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, command
        assert capsys.readouterr().out.strip(), command


def make_demo_commands() -> list[str]:
    """The `minicpmv ...` commands of the Makefile's demo target (without the .venv/bin/ path)."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", makefile, flags=re.M).group(1)
    return [line.strip().split("/bin/", 1)[1] for line in recipe.splitlines()]


def test_make_demo_runs_readme_commands():
    commands = make_demo_commands()
    assert len(commands) == 2 and all(command in readme_commands() for command in commands)  # so they run above


def test_make_demo_answers_with_the_bundled_model(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    answers = []
    for command in make_demo_commands():
        assert main(shlex.split(command)[1:]) == 0
        captured = capsys.readouterr()
        answers.append(captured.out.strip())
        assert "peak RSS" in captured.err
    assert answers == ["two", "54.05"]  # a purple square and a green star; the receipt's TOTAL line


def test_readme_openai_snippet_prints_only_the_answer_text(monkeypatch):
    """The README's openai-client snippet, run as written against a server on loopback with the
    bundled model: it prints the streamed answer and nothing else (no `None`, no usage object)."""
    import contextlib
    import io

    import pytest

    pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from live_server import running

    import minicpmv
    from minicpmv.bundled import demo_model_path

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "from openai import" in b)
    chat = minicpmv.load(demo_model_path())
    expected = chat.generate(
        [{"role": "user", "content": [ROOT / "minicpmv" / "assets" / "example.png", "What is in the image?"]}],
        max_new_tokens=16,
    ).text
    monkeypatch.chdir(ROOT)
    with running(chat) as url:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(snippet.replace("http://127.0.0.1:8080", url), {})
    assert out.getvalue() == expected + "\n"
