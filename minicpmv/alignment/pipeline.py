"""The RLAIF-V stages as resumable steps over JSONL files in one folder:

  responses.jsonl  one line per instruction: its N sampled answers       (sample_responses)
  feedback.jsonl   one line per instruction: claims, questions, verdicts  (give_feedback)
  pairs.jsonl      DPO pairs, pairs-summary.json                          (make_pairs)

A line is appended (flushed and synced) when an instruction is finished, so a killed stage
loses at most the instruction in flight and continues from the next on the same call."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from ..errors import PromptError
from ..files import recover, write_text_atomic
from ..jsonfile import open_for_append, read_jsonl
from .feedback import (
    claim_label,
    demo_claims,
    parse_bullets,
    question_prompt,
    response_score,
    split_prompt,
    verification_question,
)
from .labeler import LABELER_REPETITION_PENALTY, yes_no_probabilities
from .pairs import build_pairs

SAMPLING_TEMPERATURE, SAMPLES, ANSWER_TOKENS = 0.7, 10, 512
SPLITTER_SAMPLING = {"temperature": 0.2, "top_p": 0.9}
SPLITTER_TOKENS = 256


def _append(handle, record: dict) -> None:
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def key_of(record: dict) -> str:
    return f"{record['ds_question_id']}@{record['question']}"


def read_instructions(path: str | Path) -> list[dict]:
    """Instructions (JSONL: question, image_path relative to the file, optional ds_question_id
    and metainfos), with absolute image paths and an id (the image path when none is given)."""
    path = Path(path)
    if not path.exists():
        raise PromptError(f"{path}: no such instructions file")
    instructions = []
    for number, record in enumerate(read_jsonl(path), 1):
        if not isinstance(record.get("question"), str):
            raise PromptError(f"{path}: instruction {number} has no question")
        image = record.get("image_path")
        image = str((path.parent / image).resolve()) if image else None
        instructions.append(
            {
                "ds_question_id": str(record.get("ds_question_id", image or number)),
                "question": record["question"],
                "image_path": image,
                "metainfos": record.get("metainfos", {}),
            }
        )
    if not instructions:
        raise PromptError(f"{path}: no instructions")
    return instructions


def _todo(items: list[dict], done_path: Path, progress: bool, desc: str):
    from tqdm import tqdm

    done = {key_of(r) for r in read_jsonl(done_path)}
    todo = [i for i in items if key_of(i) not in done]
    return todo, tqdm(total=len(items), initial=len(items) - len(todo), desc=desc, unit="instr", disable=not progress)


def sample_responses(
    chat,
    instructions: list[dict],
    output: Path,
    n: int = SAMPLES,
    temperature: float = SAMPLING_TEMPERATURE,
    max_new_tokens: int = ANSWER_TOKENS,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """N answers per instruction from the policy: one prompt, one set of settings, sampled as
    one batch from a seed of the instruction's own (so a resumed run draws the same)."""
    output.mkdir(parents=True, exist_ok=True)
    recover(output)  # staged files a killed run left
    path = output / "responses.jsonl"
    todo, bar = _todo(instructions, path, progress, "sample")
    with open_for_append(path) as handle, bar:
        for item in todo:
            # a str in a message's content is text: the image goes in as a Path
            content = [Path(item["image_path"]), item["question"]] if item["image_path"] else item["question"]
            conversation = [{"role": "user", "content": content}]
            generations = chat.generate_batch(
                [conversation] * n,
                preset="sampling",
                temperature=temperature,
                max_new_tokens=max_new_tokens,
                seed=zlib.crc32(f"{seed}/{key_of(item)}".encode()),
            )
            _append(handle, {**item, "answers": [g.text for g in generations]})
            bar.update(1)
    return path


class DemoSplitter:
    """Rule-based claim splitter for the demo world's descriptions (a splitter, not a judge)."""

    name = "demo-rules"

    def __call__(self, question: str, answer: str) -> tuple[list[str], list[str]]:
        pairs = demo_claims(answer)
        return [c for c, _ in pairs], [q for _, q in pairs]


class ModelSplitter:
    """Claims and yes/no questions from an instruct model: `generate(prompt) -> text` (a local
    checkpoint or an endpoint), prompted and parsed by the RLAIF-V rules."""

    name = "model"

    def __init__(self, generate):
        self.generate = generate

    def __call__(self, question: str, answer: str) -> tuple[list[str], list[str]]:
        try:
            claims = [c for c in parse_bullets(self.generate(split_prompt(question, answer))) if c]
            if not claims:
                return [], []
            return claims, [q for q in parse_bullets(self.generate(question_prompt(claims))) if q]
        except PromptError:  # an answer the splitter cannot take (e.g. image markers typed in it): unscored
            return [], []


def judge_answer(labeler, splitter, image, question: str, answer: str, penalty: float) -> dict:
    claims, questions = splitter(question, answer)
    probabilities = []
    for asked in questions:
        try:
            probabilities.append(yes_no_probabilities(labeler, image, verification_question(asked), penalty))
        except PromptError:  # a question the labeler cannot take: that claim stays unjudged (no pair uses it)
            break
    labels = [claim_label(p) for p in probabilities]
    return {
        "answer": answer,
        "claims": claims,
        "questions": questions,
        "probabilities": probabilities,
        "labels": labels,
        "score": response_score(labels),
    }


def give_feedback(
    labeler, splitter, responses: Path, output: Path, penalty: float = LABELER_REPETITION_PENALTY, progress: bool = True
) -> Path:
    """Split every answer into claims, ask the labeler each claim's yes/no question with the
    image, and score the answer -(rejected claims)."""
    path = output / "feedback.jsonl"
    items = read_jsonl(responses)
    todo, bar = _todo(items, path, progress, "feedback")
    with open_for_append(path) as handle, bar:
        for item in todo:
            image = Path(item["image_path"]) if item["image_path"] else None
            judged = [judge_answer(labeler, splitter, image, item["question"], a, penalty) for a in item["answers"]]
            _append(
                handle,
                {k: v for k, v in item.items() if k != "answers"} | {"responses": judged, "splitter": splitter.name},
            )
            bar.update(1)
    return path


def make_pairs(feedback: Path, output: Path, k: int = 2, gap: int = 1, seed: int = 0) -> tuple[Path, dict]:
    """pairs.jsonl (DPO pairs) and pairs-summary.json from the judged answers."""
    responses = [
        {**{f: item[f] for f in ("ds_question_id", "question", "image_path")}, **judged}
        for item in read_jsonl(feedback)
        for judged in item["responses"]
    ]
    pairs, summary = build_pairs(responses, k=k, gap=gap, seed=seed)
    path = output / "pairs.jsonl"
    write_text_atomic(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    write_text_atomic(output / "pairs-summary.json", json.dumps(summary, indent=1))
    return path, summary
