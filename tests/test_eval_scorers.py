"""The scorers against VLMEvalKit's own numbers (tests/fixtures/eval: synthetic prediction files
and the scores VLMEvalKit's code gave for them), and one named test per scoring rule or quirk."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from minicpmv.evaluation import chair, mathvista, mcq, vqa, yorn
from minicpmv.evaluation.scoring import score
from minicpmv.evaluation.text import normalize_vqa_answer, process_punctuation
from minicpmv.evaluation.tsv import TableError, read_table, write_table

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
BENCHMARKS = json.loads((FIXTURES / "manifest.json").read_text())["benchmarks"]


def same(expected, got, tol):
    if isinstance(expected, bool) or isinstance(got, bool):
        return expected == got
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(expected, got, rel_tol=0, abs_tol=tol)
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(same(a, b, tol) for a, b in zip(expected, got))
    return expected == got


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_metric_and_row_field_equals_vlmevalkit(name):
    reference = json.loads((FIXTURES / f"{name}.scores.json").read_text())
    result = score(name, FIXTURES / f"{name}.tsv")
    tol = 1e-6 if name == "TextVQA_VAL" else 1e-9
    assert set(result["metrics"]) == set(reference["metrics"])
    for key, value in reference["metrics"].items():
        assert same(value, result["metrics"][key], tol), (key, value, result["metrics"][key])
    assert set(result["per_row"]) == set(reference["per_row"])
    compared = 0
    for index, fields in reference["per_row"].items():
        for field, value in fields.items():
            if field in result["per_row"][index]:
                compared += 1
                assert same(value, result["per_row"][index][field], tol), (index, field, value)
    assert compared >= len(reference["per_row"])


def test_pandas_na_strings_read_as_nan():
    """pandas' NA parsing: a prediction None/NA/N/A/empty is the string 'nan' to the scorers."""
    _, rows = read_table(FIXTURES / "TextVQA_VAL.tsv")
    values = {str(r["prediction"]) for r in rows}
    assert "None" not in values and "nan" in values


def test_numeric_option_columns_are_typed_as_pandas_does(tmp_path):
    """A numeric column with a missing cell becomes float: option 12 is '12.0' to can_infer_text."""
    path = tmp_path / "t.tsv"
    write_table(
        path,
        ["index", "A", "B", "prediction"],
        [{"index": 1, "A": "12", "B": "3", "prediction": "x"}, {"index": 2, "A": "", "B": "4", "prediction": "y"}],
    )
    _, rows = read_table(path)
    assert rows[0]["A"] == 12.0 and isinstance(rows[0]["A"], float) and rows[0]["B"] == 3
    assert isinstance(rows[1]["prediction"], str)


def test_yes_no_punctuation_rule():
    """`*`, `:` and `'` are not punctuation to YOrN_Extraction; `!`, `.` and `"` are."""
    assert [yorn.extract_yes_no(t) for t in ("**Yes**", "Yes: definitely", "'yes'", "Nope", "Y")] == ["Unknown"] * 5
    assert [yorn.extract_yes_no(t) for t in ('"Yes"', "Yes!", "yes...", "Yes, although it is not obvious.")] == [
        "Yes"
    ] * 4
    assert yorn.extract_yes_no("No.") == "No"


def test_digit_comma_deletes_every_mark():
    """A digit,digit comma makes every punctuation mark be deleted instead of spaced."""
    assert process_punctuation("1,500 a/b") == "1500 ab"
    assert process_punctuation("a/b") == "a b"


def test_pope_unknown_is_negative_for_f1_but_wrong_for_acc():
    rows = [
        {"index": 1, "answer": "No", "prediction": "maybe", "category": "random"},
        {"index": 2, "answer": "Yes", "prediction": "yes", "category": "random"},
    ]
    yorn.score_rows(rows)
    metrics = yorn.pope_metrics(rows)
    assert metrics["split=random|precision"] == 100 and metrics["split=random|acc"] == 50


def test_letter_must_stand_in_the_last_four_tokens():
    """A lone option letter counts only when its first occurrence is among the last 4 words."""
    choices = {"A": "cat", "B": "dog"}
    assert mcq.can_infer("A is my final choice for this question.", choices) is None
    assert mcq.can_infer("I pick A.", choices) == "A"


def test_answer_is_pattern_reads_lower_case_article():
    """The 'answer is X' pattern is case-insensitive (A-D only): 'a photograph' reads as A."""
    assert mcq.can_infer("The answer is a photograph.", {"A": "x", "B": "y"}) == "A"


def test_option_text_substring_rule():
    """Exactly one option text inside a short enough answer; '12' is ambiguous with 2/12."""
    assert mcq.can_infer("12", {"A": "2", "B": "12", "C": "20", "D": "21"}) is None
    assert mcq.can_infer("No, definitely.", {"A": "Yes", "B": "No"}) is None


def test_mmmu_open_question_becomes_two_options():
    rows = [{"index": 1, "A": float("nan"), "B": float("nan"), "answer": "42", "prediction": "142"}]
    mcq.mmmu_open_as_choice(rows)
    assert rows[0]["A"] == "42" and rows[0]["B"] == "Other Answers" and rows[0]["answer"] == "A"
    assert mcq.extract_option(rows[0]) == "A"  # substring matching: 142 contains 42


def test_circular_group_needs_every_copy():
    base = {"question": "q", "A": "cat", "B": "dog", "C": "cow", "D": "pig"}
    rows = [dict(base, index=0, answer="A", prediction="A"), dict(base, index=1_000_000, answer="B", prediction="?")]
    per_row, bases = mcq.circular(rows)
    assert bases[0]["hit"] == 0 and per_row["1000000"]["option"] == "Z"


def test_textvqa_gold_answers_always_normalised():
    score_, _ = vqa.vqa_accuracy("coca-cola", ["Coca-Cola"] * 10)
    assert score_ == 1


def test_period_strip_stops_after_32():
    """The official tool passes re.UNICODE (32) as the count: 40 leading dots leave 8."""
    assert normalize_vqa_answer("." * 40 + "x") == "." * 8 + "x"


def test_anls_keeps_exactly_half():
    """ANLS is set to 0 only below 0.5; a distance of exactly 0.5 keeps 0.5."""
    assert vqa.anls("ab", ["ax"])[0] == 0.5
    assert vqa.anls("abc", ["xyz"])[0] == 0.0


def test_anls_denominator_uses_raw_strings():
    assert vqa.normalized_levenshtein("   Smyth   ", "Smith") == pytest.approx(1 / 11)


def test_ocrbench_formula_category_keeps_case():
    assert vqa.ocrbench_hit("x^{2}", ["X^{2}"], vqa.HME) == 0
    assert vqa.ocrbench_hit("it is 17", ["7"], "Regular Text Recognition") == 1


def test_mathvista_integer_zero_is_a_failed_prefetch():
    """VLMEvalKit tests the stored value for truth, so a right answer 0 fails the prefetch."""
    row = {"question_type": "free_form", "answer_type": "integer", "answer": "0", "prediction": "0"}
    assert mathvista.prefetch(row) is None
    row.update(answer="14", prediction="+14")
    assert mathvista.prefetch(row) == 14


def test_chair_counts_hallucinated_mentions():
    table = chair.synonym_table("demo")
    assert chair.mentioned_objects("Two red circles and a blue box.", table) == ["circle", "square"]
    rows = [
        {"index": 1, "objects": "['red circle']", "prediction": "A red circle and a star."},
        {"index": 2, "objects": "['blue square']", "prediction": "A blue square."},
    ]
    metrics, per_row = chair.chair_metrics(rows)
    assert per_row["1"]["hallucinated"] == ["star"] and metrics["CHAIRs"] == 50
    assert metrics["CHAIRi"] == pytest.approx(100 / 3) and metrics["recall"] == 100


@pytest.mark.parametrize(
    "file,problem,text",
    [
        ("MME.tsv", ["--benchmark", "NOPE"], "unknown benchmark"),
        ("RealWorldQA.tsv", ["--benchmark", "OCRBench"], "missing column category"),
        ("MME.tsv", ["--benchmark", "OCRBench"], "must be a list literal"),
    ],
)
def test_score_cli_bad_input_is_one_line_and_exit_2(file, problem, text):
    run = subprocess.run(
        [sys.executable, "-m", "minicpmv", "eval", "score", str(FIXTURES / file), *problem],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and text in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_score_cli_not_a_tsv(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b"\xff\xfe garbage")
    run = subprocess.run(
        [sys.executable, "-m", "minicpmv", "eval", "score", str(path), "-b", "MME"], capture_output=True, text=True
    )
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1


def test_score_cli_json_contract():
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "minicpmv",
            "eval",
            "score",
            str(FIXTURES / "POPE.tsv"),
            "--benchmark",
            "POPE",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(run.stdout)
    reference = json.loads((FIXTURES / "POPE.scores.json").read_text())
    assert result["benchmark"] == "POPE" and result["metrics"] == pytest.approx(reference["metrics"])
    assert result["per_row"]["0"] == reference["per_row"]["0"]


def test_scorers_do_not_import_torch():
    code = "import sys, minicpmv.evaluation.scoring as s; s.score('MME', sys.argv[1]); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code, str(FIXTURES / "MME.tsv")], capture_output=True, text=True)
    assert run.stdout.strip() == "False", run.stderr


def test_table_error_on_ragged_rows(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text('"index"\t"prediction"\n"1"\n')
    with pytest.raises(TableError, match="line 2"):
        read_table(path)


def test_chair_coco_table_merges_two_word_names_first():
    """Two-word names win over their last word (teddy bear is not a bear, hot dog not a dog)."""
    table = chair.synonym_table("coco")
    text = "Two men ride bikes past a hot dog stand; a teddy bear sits near the wine glasses."
    assert chair.mentioned_objects(text, table) == ["person", "bicycle", "hot dog", "teddy bear", "wine glass"]


def test_chair_coloured_table_counts_a_wrong_colour():
    """At colour + shape level a description's wrong colour is a hallucinated object."""
    rows = [{"index": 1, "objects": "['blue circle']", "prediction": "A large red circle at the center."}]
    assert chair.chair_metrics(rows, "demo")[0]["CHAIRs"] == 0
    assert chair.chair_metrics([dict(rows[0])], "demo_coloured")[1]["1"]["hallucinated"] == ["red circle"]


def test_attribute_hallucination_counts_a_wrong_size_or_place():
    """Demo descriptions with every attribute counted: a right shape at the wrong place is wrong."""
    assert chair.demo_objects("A large red circle at the top left and a star.") == [
        "large red circle at the top left"
    ]  # "a star" names no colour: not an object sentence
    rows = [
        {
            "index": 1,
            "objects": "['small red circle at the top left']",
            "prediction": "A large red circle at the top left.",
        },
        {"index": 2, "objects": "['small blue star at the center']", "prediction": "A small blue star at the center."},
    ]
    metrics, per_row = chair.chair_metrics(rows, "demo_coloured")
    assert metrics["CHAIRs"] == 0 and metrics["attribute_response_rate"] == 50
    assert per_row["1"]["wrong_attributes"] == ["large red circle at the top left"]
