"""`minicpmv align`: RLAIF-V. Sample answers from the policy, judge them claim by claim with a
labeler model (divide and conquer), build preference pairs, train DPO, and repeat."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .options import wire


@dataclass
class AlignFlags:
    """Every stage's flags: the policy, the output folder, precision, seed."""

    output: str
    model: str | None = None
    dtype: str | None = None
    vision_dtype: str = "auto"
    seed: int = 0


@dataclass
class SampleFlags:
    instructions: str
    n: int = 10
    temperature: float = 0.7
    max_new_tokens: int = 512


@dataclass
class JudgeFlags:
    labeler: str | None = None
    labeler_repetition_penalty: float = 1.2
    splitter: str = "model"
    splitter_model: str | None = None
    splitter_api_base: str | None = None
    splitter_api_key: str | None = None
    splitter_api_model: str | None = None


@dataclass
class PairFlags:
    k: int = 2
    gap: int = 1


@dataclass
class DPOFlags:
    iterations: int = 1
    recipe: str = "dpo"
    max_steps: int = 100
    set: list[str] | None = None


def _loader(common: AlignFlags):
    """path (None: the bundled demo model) -> a loaded ChatModel, at the stage's precision."""
    from ..chat import load

    def load_path(path: str | None):
        if path is None:
            from ..bundled import demo_model_path

            path = str(demo_model_path())
        return load(path, dtype=common.dtype, vision_dtype=common.vision_dtype)

    return load_path


def _splitter(judge: JudgeFlags, policy, load_path):
    from ..alignment.pipeline import SPLITTER_SAMPLING, SPLITTER_TOKENS, DemoSplitter, ModelSplitter

    if judge.splitter == "demo-rules":
        return DemoSplitter()
    if judge.splitter_api_base:
        from ..evaluation.answerers import EndpointAnswerer

        endpoint = EndpointAnswerer(
            judge.splitter_api_base, judge.splitter_api_key, model=judge.splitter_api_model, sampling=SPLITTER_SAMPLING
        )
        return ModelSplitter(lambda prompt: endpoint([[prompt]], SPLITTER_TOKENS)[0])
    model = policy if judge.splitter_model is None else load_path(judge.splitter_model)
    return ModelSplitter(
        lambda prompt: (
            model.generate(
                [{"role": "user", "content": prompt}],
                preset="sampling",
                top_k=0,
                repetition_penalty=1.0,
                max_new_tokens=SPLITTER_TOKENS,
                seed=0,
                **SPLITTER_SAMPLING,
            ).text
        )
    )


def _check(*counts: tuple[str, int], judge: JudgeFlags | None = None) -> None:
    for flag, value in counts:
        if value < 1:
            raise ConfigError(f"--{flag} must be at least 1")
    if judge is not None and judge.splitter == "model" and judge.splitter_model is None and not judge.splitter_api_base:
        print(
            "minicpmv align: the policy itself splits claims (--splitter-model or --splitter-api-base to use "
            "an instruct model)",
            file=sys.stderr,
        )


def _judge(judge: JudgeFlags, policy, load_path):
    """(labeler, splitter) of a feedback stage; the labeler is the policy unless --labeler."""
    labeler = policy if judge.labeler is None else load_path(judge.labeler)
    return labeler, _splitter(judge, policy, load_path)


def sample(common: AlignFlags, sampling: SampleFlags) -> str:
    """N sampled answers per instruction from the policy into OUTPUT/responses.jsonl (resumable)."""
    from ..alignment.pipeline import read_instructions, sample_responses

    _check(("n", sampling.n))
    path = sample_responses(
        _loader(common)(common.model),
        read_instructions(sampling.instructions),
        Path(common.output),
        sampling.n,
        sampling.temperature,
        sampling.max_new_tokens,
        common.seed,
    )
    print(path)
    return str(path)


def feedback(common: AlignFlags, judge: JudgeFlags) -> str:
    """Claims, yes/no questions and the labeler's verdicts for OUTPUT/responses.jsonl, into
    OUTPUT/feedback.jsonl (resumable)."""
    from ..alignment.pipeline import give_feedback

    _check(judge=judge)
    output = Path(common.output)
    if not (output / "responses.jsonl").exists():
        raise ConfigError(f"{output / 'responses.jsonl'}: missing (run `minicpmv align sample` first)")
    load_path = _loader(common)
    policy = None if judge.splitter == "demo-rules" and judge.labeler else load_path(common.model)
    labeler, splitter = _judge(judge, policy, load_path)
    path = give_feedback(labeler, splitter, output / "responses.jsonl", output, judge.labeler_repetition_penalty)
    print(path)
    return str(path)


def pairs(common: AlignFlags, pairing: PairFlags) -> dict:
    """DPO pairs from OUTPUT/feedback.jsonl into OUTPUT/pairs.jsonl, with a summary."""
    from ..alignment.pipeline import make_pairs

    _check(("k", pairing.k))
    output = Path(common.output)
    if not (output / "feedback.jsonl").exists():
        raise ConfigError(f"{output / 'feedback.jsonl'}: missing (run `minicpmv align feedback` first)")
    _, summary = make_pairs(output / "feedback.jsonl", output, pairing.k, pairing.gap, common.seed)
    print(json.dumps(summary, indent=1))
    return summary


def run(common: AlignFlags, sampling: SampleFlags, judge: JudgeFlags, pairing: PairFlags, dpo: DPOFlags) -> list[dict]:
    """Run --iterations RLAIF-V rounds, each starting from the last one's model."""
    from ..alignment.rounds import Round, run_rounds
    from ..training.recipes import parse_assignments, recipe

    _check(("n", sampling.n), ("k", pairing.k), ("iterations", dpo.iterations), judge=judge)
    load_path = _loader(common)
    settings = Round(
        instructions=sampling.instructions,
        n=sampling.n,
        temperature=sampling.temperature,
        max_new_tokens=sampling.max_new_tokens,
        seed=common.seed,
        penalty=judge.labeler_repetition_penalty,
        k=pairing.k,
        gap=pairing.gap,
        dpo=recipe(dpo.recipe, {"max_steps": dpo.max_steps, **parse_assignments(dpo.set or [])}),
    )
    rounds = run_rounds(
        common.model,
        Path(common.output),
        dpo.iterations,
        settings,
        load_path,
        lambda policy: _judge(judge, policy, load_path),
    )
    print(json.dumps({"iterations": rounds}, indent=1))
    return rounds


def _common(p) -> None:
    p.add_argument("-m", "--model", help="the policy checkpoint (default: the bundled demo model)")
    p.add_argument("-o", "--output", required=True, help="folder for the stages' files")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default float32 on CPU")
    p.add_argument("--vision-dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=0)


def _feedback_flags(p) -> None:
    p.add_argument("--labeler", help="the labeler checkpoint (default: the policy itself, self-feedback)")
    p.add_argument("--labeler-repetition-penalty", type=float, default=1.2)
    p.add_argument(
        "--splitter",
        choices=["model", "demo-rules"],
        default="model",
        help="claims from an instruct model, or the demo world's rule-based splitter",
    )
    p.add_argument("--splitter-model", help="checkpoint of the instruct model that splits claims (default: policy)")
    p.add_argument("--splitter-api-base", help="an OpenAI-compatible endpoint that splits claims instead")
    p.add_argument("--splitter-api-key")
    p.add_argument("--splitter-api-model")


def _sample_flags(p) -> None:
    p.add_argument("--instructions", required=True, help="JSONL: question, image_path[, ds_question_id]")
    p.add_argument("--n", type=int, default=10, help="answers per instruction (default 10)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=512)


def _pair_flags(p) -> None:
    p.add_argument("--k", type=int, default=2, help="pairs per instruction at most (default 2)")
    p.add_argument("--gap", type=int, default=1, help="score gap a pair needs (default 1)")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "align", help="RLAIF-V: sampled answers, AI feedback, pairs, DPO", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="align_command", metavar="COMMAND", required=True)
    for name, function, flags in (
        ("sample", sample, (_sample_flags,)),
        ("feedback", feedback, (_feedback_flags,)),
        ("pairs", pairs, (_pair_flags,)),
    ):
        p = commands.add_parser(name, help=function.__doc__.split("\n")[0], description=function.__doc__)
        _common(p)
        for add in flags:
            add(p)
        wire(p, function)
    p = commands.add_parser(
        "run", help="sample, judge, pair and train DPO, for --iterations rounds", description=run.__doc__
    )
    _common(p)
    _feedback_flags(p)
    _sample_flags(p)
    _pair_flags(p)
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--recipe", choices=["dpo", "dpo-lora"], default="dpo")
    p.add_argument("--max-steps", type=int, default=100, help="DPO steps per iteration (default 100)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any DPO recipe setting (repeatable)")
    wire(p, run)
