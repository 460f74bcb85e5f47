"""`minicpmv eval compare` (paired bootstrap, changed rows, bars) and `minicpmv eval download`
(against a server of our own on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from minicpmv.evaluation.compare import compare_runs, paired_bootstrap, row_scores
from minicpmv.evaluation.download import DownloadError, download_benchmark
from minicpmv.evaluation.scoring import score
from minicpmv.evaluation.tsv import read_cells, write_table

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def _run_folder(folder: Path, name: str, change: dict[str, str]) -> None:
    """A run folder as `eval run` leaves it, from a fixture with some predictions replaced."""
    folder.mkdir(parents=True)
    header, records = read_cells(FIXTURES / f"{name}.tsv")
    rows = [dict(zip(header, r)) for r in records]
    for row in rows:
        row["prediction"] = change.get(row["index"], row["prediction"])
    write_table(folder / f"{name}.tsv", header, rows)
    (folder / f"{name}.scores.json").write_text(json.dumps(score(name, folder / f"{name}.tsv")))


def test_paired_bootstrap_interval_holds_the_difference():
    a = {str(i): float(i % 2) for i in range(200)}
    b = {str(i): 1.0 for i in range(200)}
    result = paired_bootstrap(a, b)
    assert result["difference"] == 0.5 and result["low"] < 0.5 < result["high"] and result["high"] - result["low"] < 0.2
    assert paired_bootstrap(a, a)["low"] == paired_bootstrap(a, a)["high"] == 0


def test_circular_rows_count_once_per_group():
    values = row_scores(score("MMBench_DEV_EN", FIXTURES / "MMBench_DEV_EN.tsv"))
    assert len(values) == 44 and all(int(i) < 1_000_000 for i in values)


def test_compare_reports_deltas_and_changed_rows(tmp_path):
    _run_folder(tmp_path / "a", "AI2D_TEST", {})
    _run_folder(tmp_path / "b", "AI2D_TEST", {"0": "Z", "1": "D"})
    report = compare_runs(tmp_path / "a", tmp_path / "b")["AI2D_TEST"]
    assert [c["index"] for c in report["changed"]] == ["0", "1"]
    before, after, delta = report["metrics"]["split=none|Overall"]
    assert delta == pytest.approx(after - before) and report["bootstrap"]["difference"] == pytest.approx(delta)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "minicpmv",
            "eval",
            "compare",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--png",
            str(tmp_path / "bars.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and "2 of 84 answers changed" in run.stdout
    assert (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture()
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_checks_md5_and_writes_atomically(tmp_path, file_server):
    root, base = file_server
    shutil.copy(FIXTURES / "POPE.tsv", root / "POPE.tsv")
    md5 = hashlib.md5((root / "POPE.tsv").read_bytes()).hexdigest()
    path = download_benchmark("POPE", tmp_path / "data", url=f"{base}/POPE.tsv", md5=md5, show_progress=False)
    assert path.read_bytes() == (root / "POPE.tsv").read_bytes()
    with pytest.raises(DownloadError, match="md5"):
        download_benchmark("MME", tmp_path / "data", url=f"{base}/POPE.tsv", show_progress=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["POPE.tsv"]  # nothing half-written


def test_download_cli_bad_url_is_one_line_exit_2(tmp_path, file_server):
    _, base = file_server
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "minicpmv",
            "eval",
            "download",
            "POPE",
            "-o",
            str(tmp_path),
            "--url",
            f"{base}/missing.tsv",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "404" in run.stderr and len(run.stderr.strip().splitlines()) == 1
