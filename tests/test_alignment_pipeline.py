"""`minicpmv align`: the stages on the bundled demo model (its descriptions, the demo-world rule
splitter, the model as its own labeler), resumable files, and the labeler's token choice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from minicpmv.alignment.labeler import answer_token_ids
from minicpmv.alignment.pipeline import ModelSplitter, read_instructions, read_jsonl, sample_responses

pytest.importorskip("yaml")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from minicpmv.demo.build import split_rng
    from minicpmv.demo.scenes import random_scene

    folder = tmp_path_factory.mktemp("scenes")
    for i in range(4):
        random_scene(split_rng(5, "align", i)).render().save(folder / f"s{i}.png")
    path = folder / "instructions.jsonl"
    path.write_text(
        "".join(json.dumps({"image_path": f"s{i}.png", "question": "Describe the image."}) + "\n" for i in range(4))
    )
    return path


@pytest.mark.slow  # faster: test_stages_as_separate_commands (each stage of the round)
def test_align_run_end_to_end_and_again_resumes(scenes, tmp_path):
    command = [
        sys.executable,
        "-m",
        "minicpmv",
        "align",
        "run",
        "--instructions",
        str(scenes),
        "-o",
        str(tmp_path),
        "--n",
        "6",
        "--temperature",
        "1.0",
        "--max-new-tokens",
        "48",
        "--splitter",
        "demo-rules",
        "--max-steps",
        "2",
        "--set",
        "precision=float32",
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    round_ = tmp_path / "iteration-1"
    summary = json.loads((round_ / "pairs-summary.json").read_text())
    pairs = read_jsonl(round_ / "pairs.jsonl")
    assert summary["kept"] == len(pairs) >= 1 and summary["instructions"] == 4 and summary["responses"] == 24
    for pair in pairs:
        chosen, rejected = pair["org_infos"]["chosen"], pair["org_infos"]["rejected"]
        assert chosen["score"] - rejected["score"] >= 1 and pair["chosen"] != pair["rejected"]
        assert chosen["score"] == -chosen["labels"].count(0)
    feedback = read_jsonl(round_ / "feedback.jsonl")
    judged = feedback[0]["responses"][0]
    assert feedback[0]["splitter"] == "demo-rules" and len(judged["labels"]) == len(judged["claims"])
    assert set(judged["probabilities"][0]) == {"yes", "Yes", "no", "No"}
    assert (round_ / "dpo" / "checkpoint-000002" / "model.safetensors").exists()
    before = {p.name: p.read_text() for p in round_.glob("*.jsonl")}
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # every stage already done
    assert again.returncode == 0 and {p.name: p.read_text() for p in round_.glob("*.jsonl")} == before


def test_sampling_resumes_to_the_same_file(scenes, tmp_path):
    import minicpmv
    from minicpmv.bundled import demo_model_path

    chat = minicpmv.load(demo_model_path())
    items = read_instructions(scenes)[:3]
    whole = sample_responses(chat, items, tmp_path / "whole", n=3, max_new_tokens=24, progress=False)
    lines = whole.read_text().splitlines(keepends=True)
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "responses.jsonl").write_text(lines[0] + lines[1][:20])  # killed while writing the second
    sample_responses(chat, items, cut, n=3, max_new_tokens=24, progress=False)
    assert read_jsonl(cut / "responses.jsonl") == read_jsonl(whole)


class FakeTokenizer:
    def __init__(self, vocabulary, bos=None):
        self.vocabulary, self.bos = vocabulary, bos

    def encode(self, text):
        return ([self.bos] if self.bos is not None else []) + [self.vocabulary[p] for p in text.split("|") if p]


def test_labeler_asks_for_each_word_s_first_token():
    """One-token words: RLAIF-V's last id of BOS + word; split words: their first piece."""
    single = FakeTokenizer({"yes": 5, "Yes": 6, "no": 7, "No": 8}, bos=1)
    assert answer_token_ids(single) == {"yes": 5, "Yes": 6, "no": 7, "No": 8}
    split = FakeTokenizer({"y|es": 0, "y": 2, "es": 3, "Y": 4, "n": 9, "o": 10, "N": 11})
    split.encode = lambda text: {"yes": [2, 3], "Yes": [4, 3], "no": [9, 10], "No": [11, 10], "": []}[text]
    assert answer_token_ids(split) == {"yes": 2, "Yes": 4, "no": 9, "No": 11}


def test_model_splitter_parses_both_prompts():
    replies = iter(
        [
            "### Facts:\n- There is a cat.\n- The cat is black.",
            "### Modified sentences:\n- Is there a cat?\n- Is the cat black?",
        ]
    )
    asked = []
    splitter = ModelSplitter(lambda prompt: asked.append(prompt) or next(replies))
    assert splitter("Describe.", "A black cat.") == (
        ["There is a cat.", "The cat is black."],
        ["Is there a cat?", "Is the cat black?"],
    )
    assert "Question: Describe.\nAnswer: A black cat." in asked[0] and "- The cat is black." in asked[1]


def test_stages_as_separate_commands(scenes, tmp_path):
    """align sample, feedback and pairs one after another give the files align run makes."""
    from minicpmv.cli import main

    assert (
        main(
            [
                "align",
                "sample",
                "--instructions",
                str(scenes),
                "-o",
                str(tmp_path),
                "--n",
                "3",
                "--max-new-tokens",
                "40",
                "--temperature",
                "1.0",
            ]
        )
        == 0
    )
    assert len(read_jsonl(tmp_path / "responses.jsonl")) == 4
    assert main(["align", "feedback", "-o", str(tmp_path), "--splitter", "demo-rules"]) == 0
    assert all(len(r["responses"]) == 3 for r in read_jsonl(tmp_path / "feedback.jsonl"))
    assert main(["align", "pairs", "-o", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "pairs-summary.json").read_text())
    assert summary["responses"] == 12 and summary["kept"] == len(read_jsonl(tmp_path / "pairs.jsonl"))
    assert main(["align", "pairs", "-o", str(tmp_path / "empty")]) == 2  # no feedback yet: one-line error


def test_the_image_reaches_policy_and_labeler_as_an_image(scenes, tmp_path, monkeypatch):
    """A str in a message's content is text: the stages must hand the image over as a Path."""
    from pathlib import Path

    from minicpmv.alignment import pipeline

    class Policy:
        def generate_batch(self, conversations, **options):
            self.content = conversations[0][0]["content"]
            return [type("G", (), {"text": "A small red circle at the center."})()] * len(conversations)

    policy = Policy()
    items = read_instructions(scenes)[:1]
    responses = sample_responses(policy, items, tmp_path, n=2, progress=False)
    assert isinstance(policy.content[0], Path) and policy.content[0].exists()
    seen = []
    monkeypatch.setattr(
        pipeline, "yes_no_probabilities", lambda labeler, image, question, penalty: seen.append(image) or {"yes": 1.0}
    )
    pipeline.give_feedback(None, pipeline.DemoSplitter(), responses, tmp_path, progress=False)
    assert seen and all(isinstance(image, Path) and image.exists() for image in seen)
