"""`minicpmv eval`: score VLMEvalKit prediction files, run a model (or an OpenAI-compatible
endpoint) over a benchmark, compare two runs, fetch a benchmark's public data."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .options import ModelFlags, wire


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
    from ..evaluation.compare import bootstrap_mean, row_scores
    from ..evaluation.scoring import headline

    name, value = headline(result)
    width = max(len(k) for k in result["metrics"])
    mean, low, high = bootstrap_mean(list(row_scores(result).values()), samples=1000)
    lines = [
        f"{result['benchmark']}: {len(result['per_row'])} rows, {name} = {_number(value)}; "
        f"per-row score {mean:.4f} (95% CI {low:.4f}-{high:.4f})"
    ]
    lines += [f"  {k:<{width}}  {_number(v)}" for k, v in sorted(result["metrics"].items())]
    if result["benchmark"].startswith("MathVista"):
        lines.append("  (rule-based part only: published MathVista numbers also use a GPT judge)")
    return "\n".join(lines)


def _number(value) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)


def list_benchmarks() -> None:
    """Print the benchmarks the harness knows: type, headline metric, what each measures."""
    from ..evaluation.benchmarks import BENCHMARKS

    for b in BENCHMARKS.values():
        print(f"{b.name:<16} {b.kind:<8} {b.headline:<26} {b.measures}")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="score, run and compare benchmarks (VLMEvalKit formats)", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="eval_command", metavar="COMMAND", required=True)
    p = commands.add_parser("score", help="score a prediction TSV", description=score.__doc__.split("\n\n")[0])
    p.add_argument("predictions", help="VLMEvalKit prediction TSV (input columns + prediction)")
    p.add_argument("--benchmark", "-b", required=True, help="benchmark name (minicpmv eval list)")
    p.add_argument(
        "--json", dest="as_json", action="store_true", help="print one JSON object with metrics and per-row results"
    )
    wire(p, score)
    p = commands.add_parser("list", help="the benchmarks the harness knows")
    wire(p, list_benchmarks)
    add_run_parser(commands)
    add_compare_parser(commands)
    add_download_parser(commands)


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
        from ..demo.benchmark_sets import write_demo_benchmarks

        write_demo_benchmarks(folder)
    return [(n, folder / f"{n}.tsv") for n in names]


@dataclass
class EndpointFlags:
    """eval run's endpoint mode: answers from an OpenAI-compatible server instead of a local model."""

    api_base: str | None = None
    api_key: str | None = None
    api_model: str | None = None
    concurrency: int = 1
    prompt_version: str = "2.6"


def _answerer(endpoint: EndpointFlags, model: ModelFlags, preset: str, max_slice_nums: int | None):
    from ..evaluation.answerers import EndpointAnswerer, LocalAnswerer
    from .options import load_model

    if endpoint.api_base:
        answerer = EndpointAnswerer(
            endpoint.api_base, endpoint.api_key, endpoint.concurrency, endpoint.api_model, endpoint.prompt_version
        )
        return answerer, {"endpoint": endpoint.api_base, "decoding": "greedy (endpoint)"}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not model.threads:  # processes share the cores
        model.threads = max(1, (os.cpu_count() or 1) // world)
    if model.llm_gguf and preset == "precise":  # llama.cpp decodes one sequence: no beam search
        print("minicpmv eval: --llm-gguf decodes greedily; using --preset greedy", file=sys.stderr)
        preset = "greedy"
    chat = load_model(model)
    return LocalAnswerer(chat, preset, max_slice_nums), {
        "model": str(model.model),
        "version": chat.version,
        "preset": preset,
        "max_slice_nums": max_slice_nums,
        "llm_gguf": model.llm_gguf,
        "mmproj": model.mmproj,
        "low_memory": model.low_memory,
    }


def run(
    benchmark: str,
    data: str | None = None,
    output: str | None = None,
    limit: int | None = None,
    batch_size: int = 1,
    max_slice_nums: int | None = None,
    max_new_tokens: int | None = None,
    preset: str = "precise",
    resume: bool = False,
    endpoint: EndpointFlags | None = None,
    model: ModelFlags | None = None,
) -> dict:
    """Answer a benchmark's rows with a model (default: the bundled demo model) or an
    OpenAI-compatible endpoint, with VLMEvalKit's MiniCPM-V prompts; write OUT/NAME.tsv (the
    prediction file) and OUT/NAME.scores.json, printing each benchmark's metrics. A killed run
    continues with --resume. Under torchrun the rows are split across the processes."""
    from ..errors import ConfigError
    from ..evaluation.benchmarks import get_benchmark
    from ..evaluation.runner import run_benchmark

    endpoint, model = endpoint or EndpointFlags(), model or ModelFlags()
    if batch_size < 1 or endpoint.concurrency < 1:
        raise ConfigError("--batch-size and --concurrency must be at least 1")
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be at least 1")
    folder = Path(output or Path("eval-results") / (Path(model.model).name if model.model else "demo-model"))
    files = _data_files(benchmark, data, folder)
    answerer, settings = _answerer(endpoint, model, preset, max_slice_nums)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    results = {}
    for name, path in files:
        result = run_benchmark(
            answerer,
            get_benchmark(name),
            path,
            folder,
            limit=limit,
            batch_size=batch_size,
            resume=resume,
            max_new_tokens=max_new_tokens,
            rank=rank,
            world=world,
            settings=settings,
        )
        if result is not None:
            results[name] = result
            print(metrics_table(result), flush=True)
            speed = result["settings"]["rows_per_second"]
            print(f"  -> {folder / (name + '.tsv')}" + (f"  ({speed:.2f} rows/s)" if speed else ""), flush=True)
    return results


def add_run_parser(commands) -> None:
    from .options import add_model_options

    p = commands.add_parser(
        "run", help="run a model or endpoint over a benchmark", description=run.__doc__.split("\n\n")[0]
    )
    p.add_argument("--benchmark", "-b", required=True, help="benchmark name, or demo (the four demo sets)")
    p.add_argument("--data", help="the benchmark's TSV (for demo: a folder of demo_*.tsv; default: generated)")
    p.add_argument("-o", "--output", help="output folder (default eval-results/<model folder>)")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--batch-size", type=int, default=1, help="rows decoded together (default 1)")
    p.add_argument("--max-slice-nums", type=int, help="cap on slices per image")
    p.add_argument("--max-new-tokens", type=int, help="answer length limit (default: the VLMEvalKit wrapper's)")
    p.add_argument(
        "--preset",
        choices=["precise", "greedy"],
        default="precise",
        help="precise = the wrappers' 3-beam decoding (default); greedy is faster",
    )
    p.add_argument("--resume", action="store_true", help="continue a killed run in the same output folder")
    p.add_argument("--api-base", help="answer with an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--api-key", help="bearer key for --api-base")
    p.add_argument("--api-model", help="model name to send to the endpoint")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight with --api-base (default 1)")
    p.add_argument(
        "--prompt-version",
        default="2.6",
        choices=["2.0", "2.5", "2.6"],
        help="whose VLMEvalKit prompts to send to an endpoint (default 2.6)",
    )
    add_model_options(p)
    wire(p, run)


def compare(dir_a: str, dir_b: str, png: str | None = None, as_json: bool = False, show: int = 10) -> dict:
    """Metric deltas of two runs (B - A) with a paired bootstrap 95% interval of the per-row score
    difference, and the rows whose answer changed; --png draws per-category bars."""
    from ..evaluation.compare import compare_runs, draw_bars

    report = compare_runs(dir_a, dir_b)
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        for name, entry in report.items():
            boot = entry["bootstrap"]
            print(
                f"{name}: per-row score {boot['mean_a']:.4f} -> {boot['mean_b']:.4f}, difference "
                f"{boot['difference']:+.4f} (95% CI {boot['low']:+.4f} .. {boot['high']:+.4f}, {boot['rows']} rows); "
                f"{len(entry['changed'])} of {entry['rows']} answers changed"
            )
            for key, (a, b, delta) in sorted(entry["metrics"].items()):
                print(f"  {key:<40} {_number(a):>10} {_number(b):>10} {delta:+.4f}")
            for row in entry["changed"][:show]:
                print(f"  row {row['index']}: {row['a'][:50]!r} -> {row['b'][:50]!r}")
    if png:
        try:
            draw_bars(report, png, (Path(dir_a).name, Path(dir_b).name))
        except ImportError:
            from ..errors import ConfigError

            raise ConfigError("--png needs matplotlib: pip install 'minicpmv[eval]'") from None
    return report


def add_compare_parser(commands) -> None:
    p = commands.add_parser("compare", help="compare two runs", description=compare.__doc__.split("\n\n")[0])
    p.add_argument("dir_a", help="output folder of the first run (the reference)")
    p.add_argument("dir_b", help="output folder of the second run")
    p.add_argument("--png", help="write per-category bars to this PNG (matplotlib)")
    p.add_argument("--json", dest="as_json", action="store_true", help="print the report as JSON")
    p.add_argument("--show", type=int, default=10, help="changed rows to print per benchmark (default 10)")
    wire(p, compare)


def download(name: str, output: str, url: str | None = None, md5: str | None = None) -> Path:
    """Fetch a benchmark's public TSV (VLMEvalKit's URL) into OUTPUT and check its md5."""
    from ..evaluation.download import download_benchmark

    path = download_benchmark(name, output, url, md5)
    print(path)
    return path


def add_download_parser(commands) -> None:
    p = commands.add_parser("download", help="fetch a benchmark's public TSV", description=download.__doc__)
    p.add_argument("name", help="benchmark name (minicpmv eval list)")
    p.add_argument("-o", "--output", required=True, help="folder to write NAME.tsv into")
    p.add_argument("--url", help="fetch from this URL instead (a mirror)")
    p.add_argument("--md5", help="expected md5 instead of the published one ('' skips the check)")
    wire(p, download)
