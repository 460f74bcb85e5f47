"""`minicpmv tune`: measures every option, stores the best per machine and model, and later
loads apply it without changing answers."""

import json

import torch
from conftest import REFERENCE, TINY

from minicpmv import load
from minicpmv.cli import main
from minicpmv.tuning import cache_path, load_tuning, machine_key, model_key


def test_tune_stores_best_settings_that_later_loads_apply(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MINICPMV_CACHE_DIR", str(tmp_path))
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
