"""Shared test helpers. All golden data comes from tests/fixtures/reference (vendored from the
official implementation's outputs, see tests/fixtures/vendor_reference.py), never from ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REFERENCE = Path(__file__).parent / "fixtures" / "reference"
TINY = {
    "2.6": REFERENCE / "minicpmv26_tiny",
    "2.5": REFERENCE / "minicpmv25_tiny",
    "2.0": REFERENCE / "minicpmv20_tiny",
    "1.0": REFERENCE / "minicpmv10_tiny",
    "4.5": REFERENCE / "minicpmv45_tiny",
}


# A tiny Qwen3.5 stack (4.6/4.7's LLM): a Gated DeltaNet layer, then a gated attention layer with
# rotary on a quarter of each head; each key head of the recurrence serves two value heads
TINY_QWEN35 = dict(
    family="qwen3_5",
    attention_bias=False,
    explicit_head_dim=32,
    partial_rotary_factor=0.25,
    layer_types=("linear_attention", "full_attention"),
    linear_key_heads=2,
    linear_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=24,
)


def load_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def slicing_records():
    """(case_id, width, height, version, record) for every case and version of slicing.json."""
    cases = load_json(REFERENCE / "slicing.json")["cases"]
    return [(c["case_id"], c["width"], c["height"], v, r) for c in cases for v, r in c["versions"].items()]


def case_options(expected: dict) -> dict:
    """The processor / chat options of a case: its official chat() kwargs (enable_thinking is
    our `thinking`)."""
    options = dict(expected.get("chat_kwargs", {}))
    if "enable_thinking" in options:
        options["thinking"] = options.pop("enable_thinking")
    return options


def golden_cases():
    """(version, case directory) for every tiny-checkpoint case."""
    return [(version, case) for version, folder in TINY.items() for case in sorted(folder.glob("case_*"))]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory):
    """Keep `minicpmv tune` results of the developer's machine out of the tests, and theirs out of it."""
    import os

    previous = os.environ.get("MINICPMV_CACHE_DIR")
    os.environ["MINICPMV_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("MINICPMV_CACHE_DIR", None)
    else:
        os.environ["MINICPMV_CACHE_DIR"] = previous
