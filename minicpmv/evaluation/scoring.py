"""Score a VLMEvalKit prediction file: `score(benchmark, path)` -> {"benchmark", "metrics", "per_row"},
with VLMEvalKit's flat metric names and units (see `minicpmv.evaluation.benchmarks`)."""

from __future__ import annotations

from pathlib import Path

from . import mathvista, mcq, vqa, yorn
from .benchmarks import Benchmark, get_benchmark
from .tsv import TableError, read_table, require_columns


def _yes_no(rows, rate):
    per_row = yorn.score_rows(rows)
    return rate(rows), per_row


def _mcq(rows, name):
    if name.upper().startswith("MMMU"):
        mcq.mmmu_open_as_choice(rows)
    if name.upper().startswith(("MMBENCH", "CCBENCH")):
        per_row, bases = mcq.circular(rows)
        return mcq.report_accuracy(bases), per_row
    per_row = mcq.vanilla(rows)
    return mcq.report_accuracy(rows), per_row


RATERS = {
    "mme": lambda rows, name: _yes_no(rows, yorn.mme_metrics),
    "pope": lambda rows, name: _yes_no(rows, yorn.pope_metrics),
    "hallusion": lambda rows, name: _yes_no(rows, yorn.hallusion_metrics),
    "yes_no": lambda rows, name: _yes_no(rows, lambda r: {"Overall": sum(x["score"] for x in r) / len(r) * 100}),
    "mcq": _mcq,
    "textvqa": lambda rows, name: vqa.textvqa(rows),
    "docvqa": lambda rows, name: vqa.docvqa(rows),
    "ocrbench": lambda rows, name: vqa.ocrbench(rows),
    "mathvista": lambda rows, name: mathvista.mathvista(rows),
}


def score_rows(benchmark: Benchmark, rows: list[dict]) -> dict:
    """Score typed rows (as `read_table` gives them; they gain per-row fields)."""
    if benchmark.scorer == "chair":
        from .chair import chair_metrics

        metrics, per_row = chair_metrics(rows)
    else:
        # VLMEvalKit sorts MCQ files by index and scores str(prediction)
        rows = sorted(rows, key=lambda r: r["index"]) if benchmark.kind == "MCQ" else rows
        metrics, per_row = RATERS[benchmark.scorer](rows, benchmark.name)
    return {"benchmark": benchmark.name, "metrics": metrics, "per_row": per_row}


def score(benchmark: str | Benchmark, path: str | Path) -> dict:
    """Score the prediction file at `path` as `benchmark`; TableError on a file it cannot score."""
    bench = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(benchmark)
    columns, rows = read_table(path)
    require_columns(path, columns, ("index", "prediction") + bench.columns)
    if not rows:
        raise TableError(f"{path}: no rows to score")
    indices = [str(r["index"]) for r in rows]
    if len(set(indices)) != len(indices):
        raise TableError(f"{path}: repeated index values")
    return score_rows(bench, rows)


def headline(result: dict) -> tuple[str, float]:
    """The metric a benchmark is reported by (its name and value)."""
    bench = get_benchmark(result["benchmark"])
    metrics = result["metrics"]
    if bench.headline == "perception+reasoning":
        return "perception+reasoning", metrics["perception"] + metrics["reasoning"]
    if bench.headline in metrics:
        return bench.headline, metrics[bench.headline]
    key = next(k for k in metrics if k.endswith("|Overall"))
    return key, metrics[key]
