"""VLMEvalKit's MiniCPM-V wrapper prompts, one named test per rule the table encodes."""

from __future__ import annotations

from PIL import Image

from minicpmv.evaluation.benchmarks import get_benchmark
from minicpmv.evaluation.prompts import (
    COT_MCQ,
    COT_SHORT,
    MCQ_25,
    MCQ_DATASET_SUFFIX,
    NO_OPTIONS,
    VQA_INSTRUCTION,
    build_prompt,
    max_new_tokens,
    message_content,
    upsize,
)

MCQ_ROW = {"index": 1, "question": "What is it?", "hint": float("nan"), "A": "cat", "B": "dog", "C": float("nan")}
OPEN_ROW = {"index": 2, "question": "How far?", "A": float("nan"), "B": float("nan")}


def test_26_mcq_options_block_and_letter_suffix():
    instruction, prompt = build_prompt(MCQ_ROW, get_benchmark("AI2D_TEST"), "2.6")
    assert instruction == ""
    assert (
        prompt
        == "Question: What is it?\nOptions:\nA. cat\nB. dog\n\nAnswer with the option's letter from the given choices directly."
    )


def test_25_mcq_instruction_is_a_separate_text_before_the_image():
    instruction, prompt = build_prompt(MCQ_ROW, get_benchmark("MMBench_DEV_EN"), "2.5")
    assert instruction == MCQ_25 and prompt == "Question: What is it?\nOptions:\nA. cat\nB. dog\n"
    image = Image.new("RGB", (8, 8))
    assert message_content(instruction, [image], prompt, "2.5") == [instruction, image, prompt]


def test_25_mmmu_corner_case_puts_the_instruction_in_the_prompt():
    instruction, prompt = build_prompt(MCQ_ROW, get_benchmark("MMMU_DEV_VAL"), "2.5")
    assert instruction == "" and prompt.startswith(MCQ_25 + "\nQuestion: What is it?")
    instruction, prompt = build_prompt(OPEN_ROW, get_benchmark("MMMU_DEV_VAL"), "2.5")
    assert instruction == "" and prompt == NO_OPTIONS + "\nQuestion: How far?\n"


def test_26_mmmu_uses_step_by_step_prompts():
    assert build_prompt(MCQ_ROW, get_benchmark("MMMU_DEV_VAL"), "2.6")[1] == COT_MCQ + "What is it?\nA. cat\nB. dog\n"
    assert build_prompt(OPEN_ROW, get_benchmark("MMMU_DEV_VAL"), "2.6")[1] == COT_SHORT + "How far?\n"


def test_20_uses_the_dataset_default_mcq_prompt_and_one_joined_text():
    instruction, prompt = build_prompt(dict(MCQ_ROW, hint="Look."), get_benchmark("AI2D_TEST"), "2.0")
    assert prompt == "Hint: Look.\nQuestion: What is it?\nOptions:\nA. cat\nB. dog\n" + MCQ_DATASET_SUFFIX
    images = [Image.new("RGB", (8, 8)), Image.new("RGB", (9, 9))]
    assert message_content("x", images, "y", "2.0") == [images[0], "x\ny"]


def test_yes_or_no_suffix_only_for_hallusionbench():
    row = {"index": 1, "question": "Is it red?"}
    assert build_prompt(row, get_benchmark("HallusionBench"), "2.5")[1] == "Is it red? Yes or No?"
    assert build_prompt(row, get_benchmark("MME"), "2.5")[1] == "Is it red?"
    assert build_prompt(row, get_benchmark("POPE"), "2.6")[1] == "Is it red?"
    assert build_prompt(row, get_benchmark("HallusionBench"), "2.6")[1] == COT_SHORT + "Is it red?"


def test_vqa_single_word_instruction():
    row = {"index": 1, "question": "What is written?"}
    assert build_prompt(row, get_benchmark("TextVQA_VAL"), "2.5") == (VQA_INSTRUCTION, "What is written?")
    assert build_prompt(row, get_benchmark("OCRBench"), "2.5") == (VQA_INSTRUCTION, "What is written?")
    assert build_prompt(row, get_benchmark("TextVQA_VAL"), "2.0") == ("", "What is written?\n" + VQA_INSTRUCTION)
    assert build_prompt(row, get_benchmark("OCRBench"), "2.6") == ("", COT_SHORT + "What is written?")


def test_answer_length_per_version_and_type():
    assert max_new_tokens(get_benchmark("MME"), "2.5") == 3
    assert max_new_tokens(get_benchmark("AI2D_TEST"), "2.0") == 20
    assert max_new_tokens(get_benchmark("AI2D_TEST"), "2.5") == 200
    assert max_new_tokens(get_benchmark("TextVQA_VAL"), "2.6") == 2048


def test_26_upsizes_small_images_of_listed_benchmarks_deterministically():
    image = Image.new("RGB", (400, 300))
    first = upsize(image, get_benchmark("AI2D_TEST"), "2.6", seed=7)
    assert first.size == upsize(image, get_benchmark("AI2D_TEST"), "2.6", seed=7).size
    assert 400 <= first.size[0] <= int(400 * (1344 * 1344 / 120000) ** 0.5)
    assert upsize(image, get_benchmark("TextVQA_VAL"), "2.6", seed=7) is image
    assert upsize(image, get_benchmark("AI2D_TEST"), "2.5", seed=7) is image


def test_4_5_and_1_0_wrappers():
    """1.0 runs VLMEvalKit's MiniCPM_V prompts (2.0's); 4.5 (MiniCPM_V_4_5) reasons step by step on
    OCRBench with its own OCR prompt and answers MCQ with 2.6's suffix."""
    from minicpmv.evaluation.prompts import OCR_COT

    row = {"question": "What is written?", "answer": "x"}
    assert build_prompt(row, get_benchmark("TextVQA_VAL"), "1.0") == build_prompt(
        row, get_benchmark("TextVQA_VAL"), "2.0"
    )
    assert build_prompt(row, get_benchmark("OCRBench"), "4.5") == ("", OCR_COT + "What is written?")
    assert build_prompt(MCQ_ROW, get_benchmark("AI2D_TEST"), "4.5") == build_prompt(
        MCQ_ROW, get_benchmark("AI2D_TEST"), "2.6"
    )
