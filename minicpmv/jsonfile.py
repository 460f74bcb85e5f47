"""Reading JSON and JSON-lines files, with one-line errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError


def read_json_object(path: Path, missing_hint: str = "") -> dict:
    """The JSON object in `path`; ConfigError if it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing{missing_hint}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def open_for_append(path: Path):
    """Open a JSON-lines file to append to, first cutting a last line that a kill left without
    its newline (it would otherwise run into the next record)."""
    path = Path(path)
    if path.exists() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            with open(path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
    return open(path, "a", encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file (none if it does not exist); a last line cut by a kill is
    ignored."""
    records = []
    if Path(path).exists():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
