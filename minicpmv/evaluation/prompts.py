"""Prompts as VLMEvalKit's MiniCPM-V wrappers build them (vlmeval/vlm/minicpm_v.py: MiniCPM_V
for 1.0 and 2.0, MiniCPM_Llama3_V for 2.5, MiniCPM_V_2_6 for 2.6, MiniCPM_V_4_5), per version and benchmark type. What
differs between versions is the data in WRAPPERS; `build_prompt` reads it.

A prompt is one user message: [instruction text?, image(s)..., prompt text], which is how the
wrappers hand it to the model's chat() (2.0 takes one image and the texts joined by newlines).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from .benchmarks import Benchmark
from .tsv import isna

VQA_INSTRUCTION = "Answer the question using a single word or phrase."
NO_OPTIONS = "Carefully read the following question Answer the question directly."
DETAIL = "Answer this question in detail."
MCQ_25 = (
    "Carefully read the following question and select the letter corresponding to the correct answer. "
    "Highlight the applicable choices without giving explanations.\nPlease just indicate your choice."
)
MCQ_26_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
MCQ_DATASET_SUFFIX = "Please select the correct answer from the options above. \n"  # VLMEvalKit's default
COT_MCQ = (
    "Carefully read the following multichoice question, solve it step by step and finally pick the option "
    'associated with the correct answer in the format of "Answer: selected option\n\n'
)
OCR_COT = "Carefully observe the image and answer the OCR-related questions below. \n\n"
COT_SHORT = (
    "Read the following question carefully, solve it step by step, and then output the final answer in "
    'the format of "Answer: single number or single word or phrase".\n\n'
)


@dataclass(frozen=True)
class Wrapper:
    """One VLMEvalKit wrapper's choices."""

    custom_types: tuple  # benchmark types it builds its own prompt for (else the dataset's default)
    max_new_tokens: dict  # per type, default under "*"
    cot: tuple = ()  # benchmark name parts that get the step-by-step prompt (2.6)
    upsize: tuple = ()  # name parts whose small images are upscaled at random toward 1344^2 (2.6)
    yes_or_no: tuple = ("HallusionBench",)  # name parts that get " Yes or No?" appended
    one_image: bool = False  # 2.0: one image, texts joined with newlines
    # multiple choice: "dataset" (VLMEvalKit's own prompt), "instruction" (MCQ_25 as an instruction
    # before the images) or "suffix" (MCQ_26_SUFFIX after the options)
    mcq: str = "dataset"
    custom_names: tuple = ()  # name parts that get the wrapper's prompt whatever their type (2.5)
    cot_prompts: tuple = ()  # (name part, step-by-step prompt) pairs in place of COT_SHORT (4.5)


WRAPPERS = {
    "2.0": Wrapper(custom_types=(), max_new_tokens={"MCQ": 20, "Y/N": 100, "*": 1024}, one_image=True),
    "2.5": Wrapper(
        custom_types=("MCQ", "VQA"),
        max_new_tokens={"MCQ": 200, "Y/N": 3, "*": 1024},
        mcq="instruction",
        custom_names=("HallusionBench",),
    ),
    "2.6": Wrapper(
        custom_types=("MCQ", "VQA", "Y/N"),
        max_new_tokens={"*": 2048},
        cot=("MMMU", "HallusionBench", "OCRBench", "ChartQA"),
        upsize=("MMVet", "MMBench", "MMStar", "AI2D", "OCRBench"),
        mcq="suffix",
    ),
}
WRAPPERS["1.0"] = WRAPPERS["2.0"]  # VLMEvalKit's MiniCPM_V class runs both
# MiniCPM_V_4_5 in its default mode: 2.6's prompts, step by step on its own list of names (OCRBench
# with a prompt of its own), images as given. Its long-CoT thinking runs (the thinking template,
# up to 16384 new tokens) are not reproduced here.
WRAPPERS["4.5"] = Wrapper(
    custom_types=("MCQ", "VQA", "Y/N"),
    max_new_tokens={"*": 2048},
    cot=("MMMU", "MathVista", "MMBench", "HallusionBench", "MMStar", "OCRBench", "ChartQA", "MathVision"),
    mcq="suffix",
    cot_prompts=(("OCRBench", OCR_COT),),
)
DATASET = Wrapper(custom_types=(), max_new_tokens={"*": 1024})  # VLMEvalKit's dataset-side prompts


def wrapper_of(version: str) -> Wrapper:
    return WRAPPERS.get(version, WRAPPERS["2.6"])


PRESET = "precise"  # the wrappers call chat(sampling=False, num_beams=3): the official 3-beam preset


def _options(row: dict) -> dict:
    return {c: row[c] for c in string.ascii_uppercase if c in row and not isna(row[c])}


def _hint(row: dict) -> str:
    hint = row.get("hint")
    return "" if hint is None or isna(hint) else f"Hint: {hint}\n"


def _mcq(row: dict, wrapper: Wrapper, name: str, cot: bool) -> tuple[str, str]:
    """(instruction, prompt) of a multiple-choice row."""
    options = _options(row)
    listed = "".join(f"{k}. {v}\n" for k, v in options.items())
    if cot:
        prompt = _hint(row) + f"{row['question']}\n" + listed
        return "", (COT_MCQ if options else COT_SHORT) + prompt
    prompt = _hint(row) + f"Question: {row['question']}\n"
    if wrapper.mcq == "dataset":
        return "", prompt + ("Options:\n" + listed + MCQ_DATASET_SUFFIX if options else "")
    if options:
        prompt += "Options:\n" + listed
        instruction = MCQ_25 if wrapper.mcq == "instruction" else ""
        prompt += MCQ_26_SUFFIX if wrapper.mcq == "suffix" else ""
    else:
        instruction = NO_OPTIONS
    if "MMMU" in name and instruction:  # the wrappers' corner case: the instruction goes into the prompt
        return "", instruction + "\n" + prompt
    return instruction, prompt


def _default(row: dict, bench: Benchmark) -> tuple[str, str]:
    """VLMEvalKit's dataset-side prompt, used where a wrapper builds none."""
    if bench.kind == "MCQ":
        return _mcq(row, DATASET, bench.name, False)
    if bench.kind == "VQA" and bench.scorer in ("textvqa", "docvqa"):
        return "", f"{row['question']}\n{VQA_INSTRUCTION}"
    return "", str(row["question"])


def build_prompt(row: dict, bench: Benchmark, version: str) -> tuple[str, str]:
    """(instruction, prompt text) for a row; the instruction is '' when there is none."""
    wrapper = wrapper_of(version)
    if bench.kind not in wrapper.custom_types and not any(part in bench.name for part in wrapper.custom_names):
        return _default(row, bench)
    cot = any(part in bench.name for part in wrapper.cot)
    question = str(row["question"])
    if bench.kind == "MCQ":
        return _mcq(row, wrapper, bench.name, cot)
    if cot:
        prefix = next((text for part, text in wrapper.cot_prompts if part in bench.name), COT_SHORT)
        return "", prefix + question
    if any(part in bench.name for part in wrapper.yes_or_no):
        return "", question + " Yes or No?"
    if bench.scorer == "ocrbench" or bench.kind == "VQA":
        return VQA_INSTRUCTION, question
    return "", question


def max_new_tokens(bench: Benchmark, version: str) -> int:
    table = wrapper_of(version).max_new_tokens
    return table.get(bench.kind, table["*"])


def upsize(image, bench: Benchmark, version: str, seed: int):
    """2.6's evaluation trick: an image under 1344x1344 pixels is enlarged by a random factor
    (width uniform between its own and the one that reaches 1344^2). VLMEvalKit draws from one
    global stream seeded 0; here each row has its own seed, so a resumed or sharded run draws
    the same sizes."""
    wrapper = wrapper_of(version)
    if not any(part in bench.name for part in wrapper.upsize):
        return image
    width, height = image.size
    if width * height >= 1344 * 1344:
        return image
    largest = int(width * (1344 * 1344 / (width * height)) ** 0.5)
    new_width = random.Random(seed).randint(width, largest)
    return image.resize((new_width, int(new_width / width * height)))


def message_content(instruction: str, images: list, prompt: str, version: str) -> list:
    """The user message's content items in the wrappers' order."""
    if wrapper_of(version).one_image:
        text = "\n".join(t for t in (instruction, prompt) if t)
        return [*images[:1], text]
    return [*([instruction] if instruction else []), *images, prompt]
