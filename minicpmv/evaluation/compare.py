"""Two runs of the same benchmarks side by side: metric deltas, a paired bootstrap 95% interval
of the difference in per-row score, and which rows changed answer. This is how a quantized model
is judged against its original: same rows, so the pairing removes most of the noise."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..files import staged_path
from .tsv import TableError, read_cells

BOOTSTRAP_SAMPLES = 2000


def row_scores(result: dict) -> dict[str, float]:
    """Each row's own score, the unit the headline averages: right/wrong (Y/N, MCQ, OCRBench,
    MathVista), the VQA score or ANLS, a circular group's hit on its base row; for CHAIR 1 when
    the description names no object the image lacks."""
    values = {}
    for index, fields in result["per_row"].items():
        if "group" in fields:
            if fields["group"] == index:
                values[index] = float(fields["group_hit"])
        else:
            value = next(fields[k] for k in ("score", "hit") if k in fields)
            values[index] = float(value)
    return values


def bootstrap_mean(values: list[float], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of the mean over `samples` resamplings with replacement)."""
    if not values:
        raise TableError("no rows to resample")
    rng, n = random.Random(seed), len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return sum(values) / n, means[int(0.025 * samples)], means[min(samples - 1, int(0.975 * samples))]


def paired_bootstrap(a: dict[str, float], b: dict[str, float], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """Mean of b - a over the shared rows, and the 2.5/97.5 percentiles of that mean over
    `samples` resamplings of the rows (with replacement, the same rows for both runs)."""
    shared = sorted(set(a) & set(b))
    if not shared:
        raise TableError("the two runs share no rows")
    difference, low, high = bootstrap_mean([b[i] - a[i] for i in shared], samples, seed)
    n = len(shared)
    return {
        "rows": n,
        "mean_a": sum(a[i] for i in shared) / n,
        "mean_b": sum(b[i] for i in shared) / n,
        "difference": difference,
        "low": low,
        "high": high,
    }


def _predictions(path: Path) -> dict[str, str]:
    header, records = read_cells(path)
    at, index = header.index("prediction"), header.index("index")
    return {r[index]: r[at] for r in records}


def compare_runs(dir_a: str | Path, dir_b: str | Path, samples: int = BOOTSTRAP_SAMPLES) -> dict:
    """{benchmark: {"metrics": {key: [a, b, b - a]}, "bootstrap": ..., "changed": [...], ...}} for
    every NAME.scores.json the two folders share."""
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    names = sorted({p.name for p in dir_a.glob("*.scores.json")} & {p.name for p in dir_b.glob("*.scores.json")})
    if not names:
        raise TableError(f"{dir_a} and {dir_b} share no NAME.scores.json (runs of `minicpmv eval run`)")
    report = {}
    for file in names:
        a, b = (json.loads((d / file).read_text(encoding="utf-8")) for d in (dir_a, dir_b))
        name = a["benchmark"]
        metrics = {
            k: [a["metrics"][k], b["metrics"][k], b["metrics"][k] - a["metrics"][k]]
            for k in a["metrics"]
            if k in b["metrics"] and isinstance(a["metrics"][k], (int, float))
        }
        scores_a, scores_b = row_scores(a), row_scores(b)
        entry = {"metrics": metrics, "bootstrap": paired_bootstrap(scores_a, scores_b, samples)}
        pred_a, pred_b = (_predictions(d / f"{name}.tsv") for d in (dir_a, dir_b))
        changed = [i for i in pred_a if i in pred_b and pred_a[i] != pred_b[i]]
        entry["changed"] = [
            {"index": i, "a": pred_a[i], "b": pred_b[i], "score_a": scores_a.get(i), "score_b": scores_b.get(i)}
            for i in changed
        ]
        entry["rows"] = len(pred_a)
        report[name] = entry
    return report


def draw_bars(report: dict, path: str | Path, labels: tuple[str, str] = ("A", "B")) -> None:
    """Per-category metric bars of the two runs, one panel per benchmark (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)
    figure, axes = plt.subplots(len(names), 1, figsize=(10, 3.2 * len(names)), squeeze=False)
    for axis, name in zip(axes[:, 0], names):
        keys = sorted(report[name]["metrics"])
        positions = range(len(keys))
        axis.bar([p - 0.2 for p in positions], [report[name]["metrics"][k][0] for k in keys], 0.4, label=labels[0])
        axis.bar([p + 0.2 for p in positions], [report[name]["metrics"][k][1] for k in keys], 0.4, label=labels[1])
        axis.set_xticks(
            list(positions), [k.split("|")[-1].split("=")[-1] for k in keys], rotation=45, ha="right", fontsize=7
        )
        axis.set_title(name)
        axis.legend(fontsize=7)
    figure.tight_layout()
    with staged_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
