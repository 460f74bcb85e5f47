"""`minicpmv tune`: measures every option, stores the best per machine and model, and later
loads apply it without changing answers."""

import json

import torch
from conftest import REFERENCE, TINY

from minicpmv import load
from minicpmv.cli import main
from minicpmv.tuning import cache_path, load_tuning, machine_key, model_key


def test_tune_stores_best_settings_that_later_loads_apply(capsys, tmp_path, monkeypatch):
    import minicpmv.devices as devices

    monkeypatch.setenv("MINICPMV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(devices, "has_native_bf16", lambda: True)  # auto: bf16, no int8 rows measured
    checkpoint = TINY["2.6"] / "checkpoint"
    before = load(checkpoint)
    assert before.tuning is None
    question = [{"role": "user", "content": [{"image": REFERENCE / "images" / "img_b_640x448.png"}, "What?"]}]
    expected = before.generate(question, max_new_tokens=6).token_ids

    assert main(["tune", "-m", str(checkpoint), "--threads", "1,2", "--crops-per-call", "1,3", "--repeat", "1"]) == 0
    table = capsys.readouterr().out
    assert table.count("| encode |") == 4 and table.count("| prefill |") == 2 and table.count("| decode |") == 2
    stored = json.loads(cache_path().read_text())
    best = stored[machine_key()][model_key(before.model.config)]
    assert set(best) == {"encode", "prefill", "decode"} and best["encode"]["crops_per_call"] in (1, 3)

    after = load(checkpoint)
    assert after.tuning == best == load_tuning(after.model.config)
    threads = torch.get_num_threads()
    assert after.generate(question, max_new_tokens=6).token_ids == expected
    assert torch.get_num_threads() == threads  # restored after each phase


def test_tune_rejects_bad_lists(capsys):
    import pytest

    with pytest.raises(SystemExit) as info:  # argparse's own refusal: exit code 2, one line
        main(["tune", "-m", str(TINY["2.6"] / "checkpoint"), "--threads", "0"])
    assert info.value.code == 2 and "values must be at least 1" in capsys.readouterr().err


def test_tune_measures_the_int8_tower_on_request_and_auto_follows_it(capsys, tmp_path, monkeypatch):
    """`--int8-vision`: the int8 tower is measured at every crop count (eager, at the best
    encoding thread count) and stored as the choice when fastest; a later load with
    vision_dtype="auto" then runs the tower in int8, while an explicit float dtype, or None (auto
    untuned) on a CPU with native bf16, keeps float."""
    import minicpmv.devices as devices
    from minicpmv.quant.dynamic import DynamicInt8Linear
    from minicpmv.tuning import save_tuning

    monkeypatch.setenv("MINICPMV_CACHE_DIR", str(tmp_path))
    checkpoint = TINY["2.6"] / "checkpoint"
    args = ["tune", "-m", str(checkpoint), "--threads", "1", "--crops-per-call", "1,2", "--repeat", "1"]
    assert main([*args, "--int8-vision"]) == 0
    table = capsys.readouterr().out
    assert table.count("| encode | 1 |") == 4 and table.count("| int8 |") == 2
    config = load(checkpoint, vision_dtype="float32").model.config
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| encode |")]
    fastest = min(rows, key=lambda cells: float(cells[6].split()[0]))
    assert (load_tuning(config)["encode"].get("vision_dtype") == "int8") == (fastest[5].strip() == "int8")

    def int8_layers(chat):
        return sum(isinstance(m, DynamicInt8Linear) for m in chat.model.vpm.modules())

    settings = {"encode": {"threads": 1, "crops_per_call": 1, "compile": False, "vision_dtype": "int8"}}
    save_tuning(config, {**settings, "prefill": {"threads": 1}, "decode": {"threads": 1, "compile": False}})
    assert int8_layers(load(checkpoint)) > 0 and load(checkpoint).vision_autocast is None
    assert int8_layers(load(checkpoint, vision_dtype="float32")) == 0
    monkeypatch.setattr(devices, "has_native_bf16", lambda: True)
    assert int8_layers(load(checkpoint, vision_dtype=None)) == 0  # untuned auto: bf16 here


def test_untuned_auto_takes_int8_vision_without_native_bf16_and_tune_measures_both(capsys, tmp_path, monkeypatch):
    """On a CPU without native bf16 (most AVX2 machines) `auto` runs the tower in int8 where the
    native kernels run; `minicpmv tune` there measures the float and the int8 tower without being
    asked, names each row's precision and stores the fastest, which `auto` then follows."""
    import pytest

    import minicpmv.devices as devices
    from minicpmv.quant import native
    from minicpmv.quant.dynamic import DynamicInt8Linear
    from minicpmv.tuning import save_tuning

    if native.library() is None:
        pytest.skip(f"native kernels unavailable: {native.why_unavailable()}")
    monkeypatch.setenv("MINICPMV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(devices, "has_native_bf16", lambda: False)
    checkpoint = TINY["2.6"] / "checkpoint"

    def int8_layers(chat):
        return sum(isinstance(m, DynamicInt8Linear) for m in chat.model.vpm.modules())

    untuned = load(checkpoint)
    assert int8_layers(untuned) > 0 and untuned.vision_autocast is None
    args = ["tune", "-m", str(checkpoint), "--threads", "1", "--crops-per-call", "1,2", "--repeat", "1"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.count("| float32 |") == 2 and table.count("| int8 |") == 2
    rows = [line.split("|") for line in table.splitlines() if line.startswith("| encode |")]
    fastest = min(rows, key=lambda cells: float(cells[6].split()[0]))[5].strip()
    config = untuned.model.config
    assert load_tuning(config)["encode"]["vision_dtype"] == fastest
    assert (int8_layers(load(checkpoint)) > 0) == (fastest == "int8")
    settings = {"threads": 1, "crops_per_call": 1, "compile": False, "vision_dtype": "float32"}
    save_tuning(config, {"encode": settings, "prefill": {"threads": 1}, "decode": {"threads": 1, "compile": False}})
    assert int8_layers(load(checkpoint)) == 0  # measured slower here: auto keeps float32
    assert int8_layers(load(checkpoint, vision_dtype=None)) > 0  # None: untuned, int8
