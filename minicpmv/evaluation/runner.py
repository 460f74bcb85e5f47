"""Run a model (or an endpoint) over a benchmark TSV: prompts as VLMEvalKit's MiniCPM-V wrappers
build them, answers appended to a partial file as they come (a killed run loses at most the
batch in flight), the prediction TSV and scores written atomically at the end.

Files in the output folder, for benchmark NAME:
  NAME.tsv            the input columns + `prediction` (VLMEvalKit's prediction file)
  NAME.scores.json    metrics, per-row results and the run's settings
  NAME.part<R>.jsonl  answers so far of process R (removed once NAME.tsv is written)
Under torchrun each process answers every WORLD_SIZE-th row and rank 0 merges by index.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import time
import zlib
from pathlib import Path

from ..errors import MiniCPMVError
from ..files import recover, write_text_atomic
from ..jsonfile import open_for_append, read_jsonl
from .benchmarks import Benchmark
from .prompts import build_prompt, message_content, upsize
from .prompts import max_new_tokens as wrapper_max_tokens
from .scoring import score
from .tsv import TableError, read_cells, typed_rows, write_table

MERGE_WAIT_SECONDS = 24 * 3600


class RunError(MiniCPMVError, RuntimeError):
    """A run cannot start or finish as asked (an unfinished run without --resume, a lost shard)."""


def row_images(row: dict, images_by_index: dict) -> list:
    """The row's images as PIL images: base64 in `image`, a list literal of them, or (MMBench's
    circular copies) the index of the row whose image it shares."""
    from PIL import Image

    value = str(row.get("image", ""))
    if len(value) <= 64 and value in images_by_index:
        value = images_by_index[value]
    encoded = ast.literal_eval(value) if value.startswith("[") else [value]
    try:
        return [Image.open(io.BytesIO(base64.b64decode(item))).convert("RGB") for item in encoded]
    except (ValueError, OSError) as exc:
        raise TableError(f"row {row['index']}: the image column is not a base64 image ({exc})") from None


def request_of(row: dict, bench: Benchmark, version: str, images_by_index: dict) -> list:
    """The user message's content for one row."""
    seed = zlib.crc32(str(row["index"]).encode())
    images = [upsize(image, bench, version, seed) for image in row_images(row, images_by_index)]
    instruction, prompt = build_prompt(row, bench, version)
    return message_content(instruction, images, prompt, version)


def _read_partial(path: Path) -> dict[str, str]:
    """Answers in a partial file, by index."""
    return {record["index"]: record["prediction"] for record in read_jsonl(path)}


def _answer_shard(
    answerer, bench, rows, images_by_index, partial: Path, batch_size: int, limit_tokens: int, show_progress: bool
) -> tuple[int, float]:
    """Answer the rows not yet in `partial`, appending each batch; returns (rows answered, seconds)."""
    from tqdm import tqdm

    done = _read_partial(partial)
    todo = [r for r in rows if str(r["index"]) not in done]
    start = time.perf_counter()
    with (
        open_for_append(partial) as out,
        tqdm(
            total=len(rows), initial=len(rows) - len(todo), unit="row", disable=not show_progress, desc=bench.name
        ) as bar,
    ):
        for first in range(0, len(todo), batch_size):
            batch = todo[first : first + batch_size]
            contents = [request_of(r, bench, answerer.version, images_by_index) for r in batch]
            for row, answer in zip(batch, answerer(contents, limit_tokens)):
                out.write(json.dumps({"index": str(row["index"]), "prediction": answer}, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(batch))
    return len(todo), time.perf_counter() - start


def _wait_for_shards(output: Path, name: str, world: int) -> None:
    deadline = time.monotonic() + MERGE_WAIT_SECONDS
    while not all((output / f"{name}.done{r}").exists() for r in range(world)):
        if time.monotonic() > deadline:
            raise RunError(f"{output}: not every process finished its shard of {name}")
        time.sleep(0.5)


def _merge(output: Path, name: str, header: list[str], cells: list[list[str]], world: int) -> Path:
    answers = {}
    for r in range(world):
        answers.update(_read_partial(output / f"{name}.part{r}.jsonl"))
    index_at = header.index("index")
    columns = [c for c in header if c != "prediction"] + ["prediction"]
    rows = [dict(zip(header, record)) for record in cells]
    missing = [row["index"] for row in rows if row["index"] not in answers]
    if missing:
        raise RunError(f"{output}: no answer for {len(missing)} row(s) of {name}, e.g. index {missing[0]}")
    for row, record in zip(rows, cells):
        row["prediction"] = answers[record[index_at]]
    path = output / f"{name}.tsv"
    write_table(path, columns, rows)
    return path


def _seed_partial(partial: Path, header: list[str], records: list[list[str]]) -> None:
    if "prediction" in header:
        at, index = header.index("prediction"), header.index("index")
        lines = [json.dumps({"index": r[index], "prediction": r[at]}, ensure_ascii=False) + "\n" for r in records]
        partial.write_text("".join(lines), encoding="utf-8")


def run_benchmark(
    answerer,
    bench: Benchmark,
    data: str | Path,
    output: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 1,
    resume: bool = False,
    max_new_tokens: int | None = None,
    rank: int = 0,
    world: int = 1,
    settings: dict | None = None,
    show_progress: bool = True,
):
    """Answer every row of `data` (the first `limit`), write NAME.tsv and NAME.scores.json in
    `output` and return the scores (None on ranks other than 0)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        recover(output)  # staged files a killed run left
    header, cells = read_cells(data)  # the strings, written back as they are; typed rows build the prompts
    columns, rows = header, typed_rows(header, cells)
    if "index" not in columns or "question" not in columns or "image" not in columns:
        raise TableError(f"{data}: a benchmark file needs index, image and question columns")
    # copies may share the image of a row past --limit (MMBench's circular copies)
    images_by_index = {str(r["index"]): str(r["image"]) for r in rows if len(str(r.get("image", ""))) > 64}
    cells, rows = cells[:limit], rows[:limit]
    partial = output / f"{bench.name}.part{rank}.jsonl"
    if partial.exists() and partial.stat().st_size and not resume:
        raise RunError(f"{partial}: an unfinished run is there; --resume continues it (or remove the folder)")
    final = output / f"{bench.name}.tsv"
    if resume and not partial.exists() and final.exists():  # a finished run: its answers stand
        _seed_partial(partial, *read_cells(final))
    (output / f"{bench.name}.done{rank}").unlink(missing_ok=True)
    limit_tokens = max_new_tokens or wrapper_max_tokens(bench, answerer.version)
    answered, seconds = _answer_shard(
        answerer,
        bench,
        rows[rank::world],
        images_by_index,
        partial,
        max(1, batch_size),
        limit_tokens,
        show_progress and rank == 0,
    )
    (output / f"{bench.name}.done{rank}").touch()
    if rank != 0:
        return None
    _wait_for_shards(output, bench.name, world)
    path = _merge(output, bench.name, header, cells, world)
    result = score(bench, path)
    result["settings"] = {
        **(settings or {}),
        "benchmark": bench.name,
        "data": str(data),
        "rows": len(rows),
        "batch_size": batch_size,
        "max_new_tokens": limit_tokens,
        "processes": world,
        "answered_now": answered,
        "seconds": seconds,
        "rows_per_second": answered / seconds if seconds > 0 and answered else None,
    }
    write_text_atomic(output / f"{bench.name}.scores.json", json.dumps(result, ensure_ascii=False, indent=1))
    for r in range(world):
        (output / f"{bench.name}.part{r}.jsonl").unlink(missing_ok=True)
        (output / f"{bench.name}.done{r}").unlink(missing_ok=True)
    return result
