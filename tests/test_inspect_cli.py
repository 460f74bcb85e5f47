"""`minicpmv inspect-image --json` reproduces every record of the reference slicing.json from real
image files, and the console entry points work."""

import json
import subprocess
import sys
from collections import defaultdict

import pytest
from conftest import REFERENCE, slicing_records
from PIL import Image

from minicpmv.cli import main

RECORDS = slicing_records()
SKIPPED_KEYS = {"placeholder_sha256", "checked_with_real_image"}


@pytest.fixture(scope="module")
def size_images(tmp_path_factory):
    """One bilevel PNG per reference size: real files, cheap to write even at 10000x10000."""
    folder = tmp_path_factory.mktemp("sizes")
    paths = {}
    for _, width, height, _, _ in RECORDS:
        if (width, height) not in paths:
            path = folder / f"{width}x{height}.png"
            Image.new("1", (width, height), 1).save(path)
            paths[width, height] = str(path)
    return paths


def run_json(argv, capsys):
    assert main(["inspect-image", "--json", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def flags(version, record):
    argv = ["--version", version, "--max-slice-nums", str(record["max_slice_nums"])]
    if version == "2.6":
        argv += ["--image-index", str(record["image_idx"])]
        argv += [] if record["use_image_id"] else ["--no-image-id"]
    return argv


def test_every_slicing_record_through_the_cli(size_images, capsys):
    # One CLI call per distinct option set, with all the images that share it.
    groups = defaultdict(list)
    for case_id, width, height, version, record in RECORDS:
        groups[tuple(flags(version, record))].append((case_id, width, height, record))
    checked = 0
    for argv, cases in groups.items():
        outputs = run_json([*argv, *(size_images[w, h] for _, w, h, _ in cases)], capsys)
        assert len(outputs) == len(cases)
        for (case_id, width, height, record), output in zip(cases, outputs):
            assert output["image"] == size_images[width, height]
            for key, value in record.items():
                if key not in SKIPPED_KEYS:
                    assert output[key] == value, (case_id, key)
            checked += 1
    assert checked == len(RECORDS)


def test_human_readable_output(capsys):
    assert main(["inspect-image", str(REFERENCE / "images" / "img_b_640x448.png")]) == 0
    out = capsys.readouterr().out
    assert "grid: 2 cols x 1 rows" in out and "image tokens: 192 (3 crop(s) x 64 queries)" in out


def test_checkpoint_settings_with_model_flag(capsys):
    image = str(REFERENCE / "images" / "img_b_640x448.png")
    [report] = run_json(["-m", str(REFERENCE / "minicpmv25_tiny" / "checkpoint"), image], capsys)
    assert report["version"] == "2.5" and report["unk_count"] == 3 * 96


def test_new_versions_in_inspect_image(capsys):
    """1.0: one 448x448 view whatever the image (no slicing); 4.5: 2.6's slicing and placeholder."""
    image = str(REFERENCE / "images" / "img_b_640x448.png")
    [old] = run_json(["--version", "1.0", image], capsys)
    assert old["best_grid"] is None and old["tgt_sizes"] == [[32, 32]] and old["unk_count"] == 64
    assert old["placeholder_compact"] == "<image><unk>*64</image>\n"
    [new] = run_json(["-m", str(REFERENCE / "minicpmv45_tiny" / "checkpoint"), image], capsys)
    [v26] = run_json(["--version", "2.6", image], capsys)
    assert new["version"] == "4.5" and new["placeholder"] == v26["placeholder"] and new["tgt_sizes"] == v26["tgt_sizes"]


def test_python_dash_m_entry_point_and_bad_flag_exit_codes(tmp_path):
    image = str(REFERENCE / "images" / "img_a_60x40.png")
    ok = subprocess.run(
        [sys.executable, "-m", "minicpmv", "inspect-image", "--json", image],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["tgt_sizes"] == [[26, 39]]
    bad = subprocess.run(
        [sys.executable, "-m", "minicpmv", "inspect-image", "--max-slice-nums", "0", image],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "minicpmv", "inspect-image", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"minicpmv inspect-image: error: {tmp_path / 'x.png'}: no such file"
