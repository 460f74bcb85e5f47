"""`minicpmv eval`: score VLMEvalKit prediction files, run a model (or an OpenAI-compatible
endpoint) over a benchmark, compare two runs, fetch a benchmark's public data."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


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
    add_run_parser(commands)


def _data_files(benchmark: str, data: str | None, output: Path) -> list[tuple[str, Path]]:
    """(benchmark, TSV) pairs to run: `demo` is the four demo sets, written if absent."""
    from ..errors import ConfigError
    from ..evaluation.benchmarks import DEMO_SETS, get_benchmark

    names = list(DEMO_SETS) if benchmark.lower() == "demo" else [get_benchmark(benchmark).name]
    if data is not None:
        if len(names) > 1:
            folder = Path(data)
            return [(n, folder / f"{n}.tsv") for n in names]
        return [(names[0], Path(data))]
    if not all(n.startswith("demo") for n in names):
        raise ConfigError(f"{names[0]}: --data FILE.tsv is needed (minicpmv eval download {names[0]} -o DIR)")
    folder = output / "data"
    if not all((folder / f"{n}.tsv").exists() for n in names):
        from ..synth.benchmark_sets import write_demo_benchmarks

        write_demo_benchmarks(folder)
    return [(n, folder / f"{n}.tsv") for n in names]


def _answerer(args: argparse.Namespace):
    from ..evaluation.answerers import EndpointAnswerer, LocalAnswerer
    from .options import load_model

    if args.api_base:
        return EndpointAnswerer(args.api_base, args.api_key, args.concurrency, args.api_model, args.prompt_version), \
            {"endpoint": args.api_base, "decoding": "greedy (endpoint)"}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not args.threads:  # processes share the cores
        args.threads = max(1, (os.cpu_count() or 1) // world)
    chat = load_model(args)
    return LocalAnswerer(chat, args.preset, args.max_slice_nums), \
        {"model": str(args.model), "version": chat.version, "preset": args.preset,
         "max_slice_nums": args.max_slice_nums, "llm_gguf": args.llm_gguf, "low_memory": args.low_memory}


def run(args: argparse.Namespace) -> dict:
    """Answer a benchmark's rows with a model (default: the bundled demo model) or an
    OpenAI-compatible endpoint, with VLMEvalKit's MiniCPM-V prompts; write OUT/NAME.tsv (the
    prediction file) and OUT/NAME.scores.json, printing each benchmark's metrics. A killed run
    continues with --resume. Under torchrun the rows are split across the processes."""
    from ..errors import ConfigError
    from ..evaluation.benchmarks import get_benchmark
    from ..evaluation.runner import run_benchmark

    for flag in ("batch_size", "concurrency"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    output = Path(args.output or Path("eval-results") / (Path(args.model).name if args.model else "demo-model"))
    files = _data_files(args.benchmark, args.data, output)
    answerer, settings = _answerer(args)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    results = {}
    for name, path in files:
        result = run_benchmark(answerer, get_benchmark(name), path, output, limit=args.limit,
                               batch_size=args.batch_size, resume=args.resume, max_new_tokens=args.max_new_tokens,
                               rank=rank, world=world, settings=settings)
        if result is not None:
            results[name] = result
            print(metrics_table(result), flush=True)
            speed = result["settings"]["rows_per_second"]
            print(f"  -> {output / (name + '.tsv')}" + (f"  ({speed:.2f} rows/s)" if speed else ""), flush=True)
    return results


def add_run_parser(commands) -> None:
    from .options import add_model_options

    p = commands.add_parser("run", help="run a model or endpoint over a benchmark", description=run.__doc__.split("\n\n")[0])
    p.add_argument("--benchmark", "-b", required=True, help="benchmark name, or demo (the four demo sets)")
    p.add_argument("--data", help="the benchmark's TSV (for demo: a folder of demo_*.tsv; default: generated)")
    p.add_argument("-o", "--output", help="output folder (default eval-results/<model folder>)")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--batch-size", type=int, default=1, help="rows decoded together (default 1)")
    p.add_argument("--max-slice-nums", type=int, help="cap on slices per image")
    p.add_argument("--max-new-tokens", type=int, help="answer length limit (default: the VLMEvalKit wrapper's)")
    p.add_argument("--preset", choices=["precise", "greedy"], default="precise",
                   help="precise = the wrappers' 3-beam decoding (default); greedy is faster")
    p.add_argument("--resume", action="store_true", help="continue a killed run in the same output folder")
    p.add_argument("--api-base", help="answer with an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--api-key", help="bearer key for --api-base")
    p.add_argument("--api-model", help="model name to send to the endpoint")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight with --api-base (default 1)")
    p.add_argument("--prompt-version", default="2.6", choices=["2.0", "2.5", "2.6"],
                   help="whose VLMEvalKit prompts to send to an endpoint (default 2.6)")
    add_model_options(p)
    p.set_defaults(run=lambda a: run(a) and 0)
