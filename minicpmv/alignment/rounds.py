"""RLAIF-V rounds: sample, judge, pair, then DPO from the round's policy; each round starts from
the last one's checkpoint. Every stage's file is kept and resumed (pipeline.py), and DPO resumes
from its own latest checkpoint, so a killed run goes on where it stopped."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .pipeline import give_feedback, make_pairs, read_instructions, sample_responses


@dataclass
class Round:
    """One round's settings: sampling, the labeler's penalty, pairing and the DPO recipe."""

    instructions: str
    n: int
    temperature: float
    max_new_tokens: int
    seed: int
    penalty: float
    k: int
    gap: int
    dpo: object  # a training Recipe


def run_round(model: str | None, output: Path, settings: Round, load, judges) -> dict:
    """One round in OUTPUT: responses, feedback, pairs, then DPO. `load(path)` gives a ChatModel
    (None: the bundled demo model), `judges(policy)` the (labeler, splitter) pair."""
    from ..bundled import demo_model_path
    from ..training.checkpoints import latest_checkpoint
    from ..training.run import run_training

    policy = load(model)
    responses = sample_responses(
        policy,
        read_instructions(settings.instructions),
        output,
        settings.n,
        settings.temperature,
        settings.max_new_tokens,
        settings.seed,
    )
    labeler, splitter = judges(policy)
    feedback = give_feedback(labeler, splitter, responses, output, settings.penalty)
    del policy, labeler, splitter  # the models go before DPO loads its own
    pairs, summary = make_pairs(feedback, output, settings.k, settings.gap, settings.seed)
    print(json.dumps(summary), flush=True)
    if not summary["kept"]:
        return {"pairs": summary, "checkpoint": None}
    train_dir = output / "dpo"
    source = model or str(demo_model_path())
    result = run_training(settings.dpo, source, pairs, train_dir, resume=latest_checkpoint(train_dir) is not None)
    return {"pairs": summary, "checkpoint": result["checkpoint"]}


def run_rounds(model: str | None, output: Path, iterations: int, settings: Round, load, judges) -> list[dict]:
    """`iterations` rounds in OUTPUT/iteration-N; stops early when a round finds no pairs."""
    rounds = []
    for number in range(1, iterations + 1):
        result = run_round(model, output / f"iteration-{number}", settings, load, judges)
        rounds.append(result)
        if result["checkpoint"] is None:
            print(f"minicpmv align: iteration {number} found no pairs; stopping", file=sys.stderr)
            break
        model = result["checkpoint"]
    return rounds
