"""VLMEvalKit's prediction files: tab-separated, every field quoted, read back the way pandas
reads them (`pandas.read_csv(f, sep='\\t')`), because the scores depend on it.

pandas turns some strings into NaN (`None`, `NA`, `N/A`, empty, ...) and a column whose values are
all numbers into ints or floats; the scorers then see `str(value)`, so a prediction `None` is
`'nan'` and an option `12` in a column with a missing cell is `'12.0'`. `read_table` does the same
without pandas: each value is a str, int, float, bool or NA (a float NaN).
"""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path

from ..errors import MiniCPMVError
from ..files import staged_path

NA = float("nan")
# pandas' default na_values (pandas >= 2.0), matched on the whole field
NA_STRINGS = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)
_INT = re.compile(r"\s*[+-]?\d+\s*\Z")
_FLOAT = re.compile(r"\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|inf|Inf|INF|infinity|Infinity)\s*\Z")
_TRUE, _FALSE = frozenset({"True", "TRUE", "true"}), frozenset({"False", "FALSE", "false"})


class TableError(MiniCPMVError, ValueError):
    """A prediction or benchmark file is not a readable TSV, or lacks a column the benchmark needs."""


def isna(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _column_values(cells: list[str]) -> list:
    """One column as pandas' C parser types it: int, float, bool or str, NaN where NA."""
    present = [c for c in cells if c not in NA_STRINGS]
    if present and all(_INT.match(c) for c in present):
        if len(present) == len(cells):
            return [int(c) for c in cells]
        return [NA if c in NA_STRINGS else float(int(c)) for c in cells]
    if present and all(_INT.match(c) or _FLOAT.match(c) for c in present):
        return [NA if c in NA_STRINGS else float(c) for c in cells]
    if present and all(c in _TRUE or c in _FALSE for c in present):
        return [NA if c in NA_STRINGS else c in _TRUE for c in cells]
    return [NA if c in NA_STRINGS else c for c in cells]


def read_cells(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """(header, records) of a TSV as the strings in the file; TableError if it is not one."""
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            records = list(csv.reader(handle, delimiter="\t"))
    except FileNotFoundError:
        raise TableError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TableError(f"{path}: not a readable UTF-8 TSV ({exc})") from None
    if not records or len(records[0]) < 2:
        raise TableError(f"{path}: not a TSV (no tab-separated header row)")
    header, body = records[0], records[1:]
    if len(set(header)) != len(header):
        raise TableError(f"{path}: repeated column names in the header")
    for number, record in enumerate(body, start=2):
        if len(record) != len(header):
            raise TableError(f"{path}: line {number} has {len(record)} fields, the header {len(header)}")
    return header, body


def read_table(path: str | Path) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a VLMEvalKit TSV; each row maps column -> typed value."""
    header, body = read_cells(path)
    return header, typed_rows(header, body)


def typed_rows(header: list[str], body: list[list[str]]) -> list[dict]:
    """Rows of column -> typed value from a TSV's strings, each column typed as pandas types it."""
    columns = [_column_values([record[i] for record in body]) for i in range(len(header))]
    return [{name: columns[i][r] for i, name in enumerate(header)} for r in range(len(body))]


def cell_text(value) -> str:
    """How a typed value is written back (NaN as an empty cell, as pandas writes it)."""
    if value is None or isna(value):
        return ""
    return str(value)


def write_table(path: str | Path, columns: list[str], rows: list[dict]) -> None:
    """Write rows as VLMEvalKit's dump() does (every field quoted), atomically: a temporary file in
    the same folder, then a rename, so a killed run never leaves half a file."""
    with staged_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([cell_text(row.get(c)) for c in columns])


def require_columns(path, columns: list[str], needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise TableError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
