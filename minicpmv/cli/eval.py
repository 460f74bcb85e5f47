"""`minicpmv eval`: score VLMEvalKit prediction files, run a model (or an OpenAI-compatible
endpoint) over a benchmark, compare two runs, fetch a benchmark's public data."""

from __future__ import annotations

import argparse
import json


def score(predictions: str, benchmark: str, as_json: bool = False) -> dict:
    """Score a VLMEvalKit prediction TSV exactly as VLMEvalKit does with no judge. With --json,
    prints {"benchmark", "metrics", "per_row"} (VLMEvalKit's flat metric names and units);
    else a table of the metrics."""
    from ..evaluation.scoring import score as score_file

    result = score_file(benchmark, predictions)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(metrics_table(result))
    return result


def metrics_table(result: dict) -> str:
    from ..evaluation.scoring import headline

    name, value = headline(result)
    width = max(len(k) for k in result["metrics"])
    lines = [f"{result['benchmark']}: {len(result['per_row'])} rows, {name} = {_number(value)}"]
    lines += [f"  {k:<{width}}  {_number(v)}" for k, v in sorted(result["metrics"].items())]
    return "\n".join(lines)


def _number(value) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def list_benchmarks() -> None:
    """Print the benchmarks the harness knows: type, headline metric, what each measures."""
    from ..evaluation.benchmarks import BENCHMARKS

    for b in BENCHMARKS.values():
        print(f"{b.name:<16} {b.kind:<8} {b.headline:<26} {b.measures}")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="score, run and compare benchmarks (VLMEvalKit formats)",
                                   description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    p = commands.add_parser("score", help="score a prediction TSV", description=score.__doc__.split("\n\n")[0])
    p.add_argument("predictions", help="VLMEvalKit prediction TSV (input columns + prediction)")
    p.add_argument("--benchmark", "-b", required=True, help="benchmark name (minicpmv eval list)")
    p.add_argument("--json", action="store_true", help="print one JSON object with metrics and per-row results")
    p.set_defaults(run=lambda a: score(a.predictions, a.benchmark, a.json) and 0)
    p = commands.add_parser("list", help="the benchmarks the harness knows")
    p.set_defaults(run=lambda a: list_benchmarks())
