"""`minicpmv align`: RLAIF-V. Sample answers from the policy, judge them claim by claim with a
labeler model (divide and conquer), build preference pairs, train DPO, and repeat."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError


def _load(path: str | None, args: argparse.Namespace):
    from ..chat import load

    if path is None:
        from ..bundled import demo_model_path

        path = str(demo_model_path())
    return load(path, dtype=args.dtype, vision_dtype=args.vision_dtype)


def _splitter(args: argparse.Namespace, policy):
    from ..alignment.pipeline import SPLITTER_SAMPLING, SPLITTER_TOKENS, DemoSplitter, ModelSplitter

    if args.splitter == "demo-rules":
        return DemoSplitter()
    if args.splitter_api_base:
        from ..evaluation.answerers import EndpointAnswerer

        endpoint = EndpointAnswerer(args.splitter_api_base, args.splitter_api_key, model=args.splitter_api_model,
                                    sampling=SPLITTER_SAMPLING)
        return ModelSplitter(lambda prompt: endpoint([[prompt]], SPLITTER_TOKENS)[0])
    model = policy if args.splitter_model is None else _load(args.splitter_model, args)
    return ModelSplitter(lambda prompt: model.generate([{"role": "user", "content": prompt}], preset="sampling",
                                                       top_k=0, repetition_penalty=1.0, max_new_tokens=SPLITTER_TOKENS,
                                                       seed=0, **SPLITTER_SAMPLING).text)


def _check(args: argparse.Namespace) -> None:
    for flag in ("n", "k", "iterations"):
        if getattr(args, flag, 1) < 1:
            raise ConfigError(f"--{flag} must be at least 1")
    if getattr(args, "splitter", None) == "model" and args.splitter_model is None and not args.splitter_api_base:
        print("minicpmv align: the policy itself splits claims (--splitter-model or --splitter-api-base to use "
              "an instruct model)", file=sys.stderr)


def iteration(model: str | None, instructions: str, output: Path, args: argparse.Namespace) -> dict:
    """One RLAIF-V round in OUTPUT: responses, feedback, pairs, then DPO; returns its summary."""
    from ..alignment.pipeline import give_feedback, make_pairs, read_instructions, sample_responses
    from ..training.checkpoints import latest_checkpoint
    from ..training.recipes import parse_assignments, recipe
    from ..training.run import run_training

    items = read_instructions(instructions)
    policy = _load(model, args)
    responses = sample_responses(policy, items, output, args.n, args.temperature, args.max_new_tokens, args.seed)
    labeler = policy if args.labeler is None else _load(args.labeler, args)
    feedback = give_feedback(labeler, _splitter(args, policy), responses, output, args.labeler_repetition_penalty)
    del policy, labeler
    pairs, summary = make_pairs(feedback, output, args.k, args.gap, args.seed)
    print(json.dumps(summary), flush=True)
    if not summary["kept"]:
        return {"pairs": summary, "checkpoint": None}
    overrides = {"max_steps": args.max_steps, **parse_assignments(args.set or [])}
    train_dir = output / "dpo"
    chosen = recipe(args.recipe, overrides)
    from ..bundled import demo_model_path

    source = model or str(demo_model_path())
    result = run_training(chosen, source, pairs, train_dir, resume=latest_checkpoint(train_dir) is not None)
    return {"pairs": summary, "checkpoint": result["checkpoint"]}


def sample(args: argparse.Namespace) -> str:
    """N sampled answers per instruction from the policy into OUTPUT/responses.jsonl (resumable)."""
    from ..alignment.pipeline import read_instructions, sample_responses

    _check(args)
    path = sample_responses(_load(args.model, args), read_instructions(args.instructions), Path(args.output),
                            args.n, args.temperature, args.max_new_tokens, args.seed)
    print(path)
    return str(path)


def feedback(args: argparse.Namespace) -> str:
    """Claims, yes/no questions and the labeler's verdicts for OUTPUT/responses.jsonl, into
    OUTPUT/feedback.jsonl (resumable)."""
    from ..alignment.pipeline import give_feedback

    _check(args)
    output = Path(args.output)
    if not (output / "responses.jsonl").exists():
        raise ConfigError(f"{output / 'responses.jsonl'}: missing (run `minicpmv align sample` first)")
    policy = None if args.splitter == "demo-rules" and args.labeler else _load(args.model, args)
    labeler = policy if args.labeler is None else _load(args.labeler, args)
    path = give_feedback(labeler, _splitter(args, policy), output / "responses.jsonl", output,
                         args.labeler_repetition_penalty)
    print(path)
    return str(path)


def pairs(args: argparse.Namespace) -> dict:
    """DPO pairs from OUTPUT/feedback.jsonl into OUTPUT/pairs.jsonl, with a summary."""
    from ..alignment.pipeline import make_pairs

    output = Path(args.output)
    if not (output / "feedback.jsonl").exists():
        raise ConfigError(f"{output / 'feedback.jsonl'}: missing (run `minicpmv align feedback` first)")
    _, summary = make_pairs(output / "feedback.jsonl", output, args.k, args.gap, args.seed)
    print(json.dumps(summary, indent=1))
    return summary


def run(args: argparse.Namespace) -> list[dict]:
    """Run --iterations RLAIF-V rounds, each starting from the last one's model."""
    _check(args)
    model, rounds = args.model, []
    for number in range(1, args.iterations + 1):
        result = iteration(model, args.instructions, Path(args.output) / f"iteration-{number}", args)
        rounds.append(result)
        if result["checkpoint"] is None:
            print(f"minicpmv align: iteration {number} found no pairs; stopping", file=sys.stderr)
            break
        model = result["checkpoint"]
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
    p.add_argument("--splitter", choices=["model", "demo-rules"], default="model",
                   help="claims from an instruct model, or the demo world's rule-based splitter")
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
    parser = subparsers.add_parser("align", help="RLAIF-V: sampled answers, AI feedback, pairs, DPO",
                                   description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="align_command", metavar="COMMAND", required=True)
    for name, function, flags in (("sample", sample, (_sample_flags,)), ("feedback", feedback, (_feedback_flags,)),
                                  ("pairs", pairs, (_pair_flags,))):
        p = commands.add_parser(name, help=function.__doc__.split("\n")[0], description=function.__doc__)
        _common(p)
        for add in flags:
            add(p)
        p.set_defaults(run=lambda a, f=function: f(a) and 0)
    p = commands.add_parser("run", help="sample, judge, pair and train DPO, for --iterations rounds",
                            description=run.__doc__)
    _common(p)
    _feedback_flags(p)
    _sample_flags(p)
    _pair_flags(p)
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--recipe", choices=["dpo", "dpo-lora"], default="dpo")
    p.add_argument("--max-steps", type=int, default=100, help="DPO steps per iteration (default 100)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any DPO recipe setting (repeatable)")
    p.set_defaults(run=lambda a: run(a) and 0)
