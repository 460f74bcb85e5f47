"""`minicpmv bench` on the tiny architecture: every row runs in its own process and reports
every column; the random checkpoints are written once; the synthetic tokenizer works."""

import json

import pytest

from minicpmv.bench import ROWS, bench, write_byte_tokenizer
from minicpmv.cli import main
from minicpmv.processing.tokenizer import load_tokenizer


def test_byte_tokenizer_round_trips_text_and_knows_the_markers(tmp_path):
    write_byte_tokenizer(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    text = "héllo <image><unk></image> wörld"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("<image>") == [tokenizer.require_id("<image>")]
    assert max(tokenizer.encode("any text at all")) < 256


@pytest.mark.slow  # faster: test_random_checkpoint_written_directly_in_the_quantized_layout_loads_and_answers
def test_all_rows_on_the_tiny_architecture(tmp_path, capsys):
    results = bench("tiny", cache=str(tmp_path), new_tokens=3, prompt_tokens=8, tune_first=False)
    assert [r["row"] for r in results] == list(ROWS)
    for row in results:
        assert row["load_s"] > 0 and row["encode_ms"] > 0 and row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0
        assert row["image_tokens"] == 10 * 64  # 1344x1344: overview + 3x3 slices
        assert row["peak_rss_mib"] > 100
    compiled = {row["row"]: row["compiled"] for row in results}
    assert compiled["+compile"] == ["encode", "decode"] and compiled["no-opt"] == compiled["+memory"] == []
    assert [row["compile_s"] > 0 for row in results] == [bool(row["compiled"]) for row in results]
    table = capsys.readouterr().out
    assert table.count("\n| +") == 5 and "| no-opt |" in table
    written = sorted(p.name for p in (tmp_path / "random-init" / "tiny").iterdir())
    assert written == ["fp32", "int4-g64", "int8"]
    assert (
        json.loads((tmp_path / "random-init" / "tiny" / "int4-g64" / "config.json").read_text())["quantization_config"][
            "bits"
        ]
        == 4
    )


def test_unknown_row_is_refused(capsys):
    assert main(["bench", "--random-init", "tiny", "--rows", "+turbo"]) == 2
    assert "unknown row" in capsys.readouterr().err


@pytest.mark.parametrize("bits", [4, 8])
def test_random_checkpoint_written_directly_in_the_quantized_layout_loads_and_answers(tmp_path, bits):
    from minicpmv import load
    from minicpmv.bench import random_quantized_checkpoint
    from minicpmv.quant.linear import Int4Linear, Int8Linear

    folder = random_quantized_checkpoint("tiny", tmp_path, bits=bits)
    assert random_quantized_checkpoint("tiny", tmp_path, bits=bits) == folder  # written once
    chat = load(folder, low_memory=True)
    result = chat.generate([{"role": "user", "content": "hi"}], max_new_tokens=3, min_new_tokens=3)
    assert len(result.token_ids) == 3
    expected = Int4Linear if bits == 4 else Int8Linear
    assert isinstance(chat.model.llm.model.layers[0].mlp.down_proj, expected)
