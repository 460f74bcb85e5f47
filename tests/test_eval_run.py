"""`minicpmv eval run`: end to end on the demo sets with the bundled model, resuming after a
SIGKILL, an endpoint (our server on loopback) against the local model, and torchrun shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minicpmv.evaluation.answerers import EndpointAnswerer, LocalAnswerer
from minicpmv.evaluation.benchmarks import get_benchmark
from minicpmv.evaluation.runner import run_benchmark
from minicpmv.evaluation.scoring import score
from minicpmv.evaluation.tsv import read_cells

TINY26 = Path(__file__).parent / "fixtures" / "reference" / "minicpmv26_tiny" / "checkpoint"
CLI = [sys.executable, "-m", "minicpmv", "eval"]


@pytest.fixture(scope="module")
def demo_sets(tmp_path_factory):
    from minicpmv.demo.benchmark_sets import write_demo_benchmarks

    return write_demo_benchmarks(tmp_path_factory.mktemp("demo-sets"), images=24)


def test_demo_run_scores_the_bundled_model_with_no_model_flag(tmp_path):
    run = subprocess.run(
        CLI + ["run", "-b", "demo", "--limit", "5", "--preset", "greedy", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("demo_yorn", "demo_mcq", "demo_vqa", "demo_caption"):
        header, records = read_cells(tmp_path / f"{name}.tsv")
        assert header[-1] == "prediction" and len(records) == 5 and all(r[-1] for r in records)
        saved = json.loads((tmp_path / f"{name}.scores.json").read_text())
        again = score(name, tmp_path / f"{name}.tsv")
        assert saved["metrics"] == pytest.approx(again["metrics"]) and saved["settings"]["rows"] == 5
        assert f"{name}:" in run.stdout
    assert not list(tmp_path.glob("*.part*.jsonl"))  # partial answers go once the TSV is written


def _run_vqa(out: Path, data: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        CLI
        + [
            "run",
            "-b",
            "demo_vqa",
            "--data",
            str(data),
            "--limit",
            "14",
            "--batch-size",
            "2",
            "--preset",
            "greedy",
            "-o",
            str(out),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # faster: test_alignment_pipeline.py::test_sampling_resumes_to_the_same_file (the same append-and-resume files)
def test_killed_run_resumes_to_the_same_prediction_file(tmp_path, demo_sets):
    whole = _run_vqa(tmp_path / "whole", demo_sets["demo_vqa"])
    assert whole.wait(timeout=600) == 0, whole.stderr.read()
    killed = _run_vqa(tmp_path / "killed", demo_sets["demo_vqa"])
    partial = tmp_path / "killed" / "demo_vqa.part0.jsonl"
    deadline = time.monotonic() + 300
    while not (partial.exists() and len(partial.read_text().splitlines()) >= 4):
        assert killed.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    kept = len(partial.read_text().splitlines())
    assert 4 <= kept < 14 and not (tmp_path / "killed" / "demo_vqa.tsv").exists()
    again = _run_vqa(tmp_path / "killed", demo_sets["demo_vqa"])  # without --resume: refused
    assert again.wait(timeout=600) == 2 and "--resume" in again.stderr.read()
    resumed = _run_vqa(tmp_path / "killed", demo_sets["demo_vqa"], "--resume")
    assert resumed.wait(timeout=600) == 0
    assert (tmp_path / "killed" / "demo_vqa.tsv").read_bytes() == (tmp_path / "whole" / "demo_vqa.tsv").read_bytes()


def test_endpoint_gives_the_local_predictions(tmp_path, demo_sets):
    pytest.importorskip("uvicorn")
    from live_server import running

    import minicpmv

    chat = minicpmv.load(TINY26, vision_dtype="float32")
    for name in ("demo_mcq", "demo_caption"):
        run_benchmark(
            LocalAnswerer(chat, "greedy"),
            get_benchmark(name),
            demo_sets[name],
            tmp_path / "local",
            limit=4,
            max_new_tokens=6,
            show_progress=False,
        )
        with running(chat) as url:
            endpoint = EndpointAnswerer(url + "/v1", concurrency=2, version=chat.version)
            run_benchmark(
                endpoint,
                get_benchmark(name),
                demo_sets[name],
                tmp_path / "endpoint",
                limit=4,
                max_new_tokens=6,
                show_progress=False,
            )
        local = read_cells(tmp_path / "local" / f"{name}.tsv")[1]
        remote = read_cells(tmp_path / "endpoint" / f"{name}.tsv")[1]
        assert [r[-1] for r in local] == [r[-1] for r in remote] and any(r[-1] for r in local)


@pytest.mark.slow  # faster: test_training_distributed.py::test_two_processes_match_one (torchrun ranks and world size)
def test_torchrun_two_processes_give_the_one_process_predictions(tmp_path, demo_sets):
    base = [
        "run",
        "-b",
        "demo_caption",
        "--data",
        str(demo_sets["demo_caption"]),
        "--limit",
        "7",
        "--preset",
        "greedy",
        "--max-new-tokens",
        "24",
    ]
    one = subprocess.run(CLI + base + ["-o", str(tmp_path / "one")], capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "minicpmv", "eval"]
        + base
        + ["-o", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "two" / "demo_caption.tsv").read_bytes() == (tmp_path / "one" / "demo_caption.tsv").read_bytes()
    assert json.loads((tmp_path / "two" / "demo_caption.scores.json").read_text())["settings"]["processes"] == 2


@pytest.mark.parametrize(
    "args,text",
    [
        (["-b", "MME"], "--data FILE.tsv is needed"),
        (["-b", "MME", "--data", "/nonexistent.tsv"], "no such file"),
        (["-b", "demo", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_run_bad_input_is_one_line_and_exit_2(tmp_path, args, text):
    run = subprocess.run(CLI + ["run", *args, "-o", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and text in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_every_model_path_runs_the_same_rows(tmp_path, demo_sets):
    """Float, a quantized folder, --low-memory and --llm-gguf (f32: the same answers as our LLM)."""
    from minicpmv.backends.gguf_export import export_gguf
    from minicpmv.cli import main

    pytest.importorskip("llama_cpp")
    gguf = export_gguf(TINY26, tmp_path / "tiny.gguf", "f32")
    assert main(["quantize", "-m", str(TINY26), "-o", str(tmp_path / "int8"), "--bits", "8"]) == 0
    base = [
        "eval",
        "run",
        "-b",
        "demo_mcq",
        "--data",
        str(demo_sets["demo_mcq"]),
        "--limit",
        "3",
        "--max-new-tokens",
        "5",
        "--vision-dtype",
        "float32",
    ]
    runs = {
        "float": ["-m", str(TINY26), "--preset", "greedy"],
        "low-memory": ["-m", str(TINY26), "--preset", "greedy", "--low-memory"],
        "gguf": ["-m", str(TINY26), "--llm-gguf", str(gguf)],
        "int8": ["-m", str(tmp_path / "int8"), "--preset", "greedy"],
    }
    answers = {}
    for name, extra in runs.items():
        assert main(base + extra + ["-o", str(tmp_path / name)]) == 0, name
        answers[name] = [r[-1] for r in read_cells(tmp_path / name / "demo_mcq.tsv")[1]]
    assert answers["low-memory"] == answers["float"] == answers["gguf"]
    assert len(answers["int8"]) == 3


class Recorder:
    """Answers "A" and keeps what it was asked (the runner's plumbing, without a model)."""

    version = "2.6"

    def __init__(self):
        self.asked = []

    def __call__(self, contents, max_new_tokens):
        self.asked += contents
        return ["A"] * len(contents)


def test_circular_copy_takes_the_image_of_its_base_row(tmp_path):
    import base64
    import io

    from PIL import Image

    from minicpmv.evaluation.tsv import write_table

    buffer = io.BytesIO()
    Image.new("RGB", (10, 12), (200, 10, 10)).save(buffer, format="PNG")
    picture = base64.b64encode(buffer.getvalue()).decode()
    base = {
        "question": "Which?",
        "A": "cat",
        "B": "dog",
        "answer": "A",
        "category": "c",
        "l2-category": "l",
        "split": "dev",
    }
    rows = [
        dict(base, index=1000000, image="0"),
        dict(base, index=0, image=picture),
        dict(base, index=2000000, image="0"),
    ]
    write_table(
        tmp_path / "mmb.tsv",
        ["index", "image", "question", "A", "B", "answer", "category", "l2-category", "split"],
        rows,
    )
    recorder = Recorder()
    recorder.version = "2.5"  # 2.6 would enlarge MMBench images at random
    result = run_benchmark(
        recorder, get_benchmark("MMBench_DEV_EN"), tmp_path / "mmb.tsv", tmp_path / "out", limit=2, show_progress=False
    )
    assert [c[1].size for c in recorder.asked] == [(10, 12), (10, 12)]  # the copy read row 0's picture
    assert recorder.asked[0][2] == "Question: Which?\nOptions:\nA. cat\nB. dog\n"
    assert result["per_row"]["1000000"]["group"] == "0" and result["metrics"]["split=dev|Overall"] == 1.0


@pytest.mark.parametrize("version", ["1.0", "4.5"])
def test_eval_run_accepts_the_new_versions(version, tmp_path, demo_sets):
    """1.0 (VLMEvalKit's MiniCPM_V prompts, one image) and 4.5 (MiniCPM_V_4_5's direct-answer
    prompts) run a benchmark end to end and write a scored prediction file."""
    from minicpmv.cli import main

    checkpoint = TINY26.parents[1] / {"1.0": "minicpmv10_tiny", "4.5": "minicpmv45_tiny"}[version] / "checkpoint"
    argv = ["eval", "run", "-b", "demo_mcq", "--data", str(demo_sets["demo_mcq"]), "--limit", "3",
            "--max-new-tokens", "4", "-m", str(checkpoint), "-o", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    header, rows = read_cells(tmp_path / "demo_mcq.tsv")
    assert len(rows) == 3 and "prediction" in header
    assert json.loads((tmp_path / "demo_mcq.scores.json").read_text())["settings"]
