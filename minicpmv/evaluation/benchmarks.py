"""The benchmarks the harness knows, as one table of data: how each is scored, which columns it
needs, what its headline metric is, and where VLMEvalKit publishes its TSV (URL and md5)."""

from __future__ import annotations

from dataclasses import dataclass

from .tsv import TableError

VLMEVAL_DATA = "https://opencompass.openxlab.space/utils/VLMEval/"


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # VLMEvalKit's dataset type: "Y/N", "MCQ", "VQA" or "Caption"
    scorer: str  # key of minicpmv.evaluation.scoring.RATERS, or "chair"
    columns: tuple  # columns a prediction file must have besides index and prediction
    headline: str  # metric the benchmark is reported by
    measures: str  # one line for the docs and `minicpmv eval list`
    md5: str = ""  # of VLMEvalKit's public TSV ("" = not published)

    @property
    def url(self) -> str:
        return VLMEVAL_DATA + self.name + ".tsv" if self.md5 else ""


_ANSWER = ("question", "answer")
BENCHMARKS = {
    b.name: b
    for b in [
        Benchmark(
            "MME",
            "Y/N",
            "mme",
            _ANSWER + ("category", "image_path"),
            "perception+reasoning",
            "perception and cognition, 14 subtasks of yes/no pairs",
            "b36b43c3f09801f5d368627fb92187c3",
        ),
        Benchmark(
            "POPE",
            "Y/N",
            "pope",
            _ANSWER + ("category",),
            "split=Overall|Overall",
            "object hallucination: is there an X in the image?",
            "c12f5acb142f2ef1f85a26ba2fbe41d5",
        ),
        Benchmark(
            "HallusionBench",
            "Y/N",
            "hallusion",
            _ANSWER + ("category", "l2-category"),
            "split=Overall|aAcc",
            "visual illusions and language hallucination, yes/no",
            "0c23ac0dc9ef46832d7a24504f2a0c7c",
        ),
        Benchmark(
            "MMBench_DEV_EN",
            "MCQ",
            "mcq",
            _ANSWER + ("A", "B"),
            "split=dev|Overall",
            "20 perception and reasoning abilities, circular MCQ (English)",
            "b6caf1133a01c6bb705cf753bb527ed8",
        ),
        Benchmark(
            "MMBench_DEV_CN",
            "MCQ",
            "mcq",
            _ANSWER + ("A", "B"),
            "split=dev|Overall",
            "the same in Chinese",
            "08b8fc3324a5ed74155350f57be69fbd",
        ),
        Benchmark(
            "AI2D_TEST",
            "MCQ",
            "mcq",
            _ANSWER + ("A", "B"),
            "split=none|Overall",
            "science diagrams, 4-option MCQ",
            "0f593e0d1c7df9a3d69bf1f947e71975",
        ),
        Benchmark(
            "RealWorldQA",
            "MCQ",
            "mcq",
            _ANSWER + ("A", "B"),
            "split=none|Overall",
            "real-world spatial understanding, MCQ",
            "92321028d2bc29040284b6674721e48f",
        ),
        Benchmark(
            "MMMU_DEV_VAL",
            "MCQ",
            "mcq",
            _ANSWER + ("A", "B", "split"),
            "split=validation|Overall",
            "college-level multi-discipline questions (open ones as 2-option MCQ)",
            "521afc0f3bf341e6654327792781644d",
        ),
        Benchmark(
            "MathVista_MINI",
            "VQA",
            "mathvista",
            _ANSWER + ("question_type", "answer_type", "choices", "answer_option", "task", "skills"),
            "Task&Skill=Overall|acc",
            "visual math, testmini; rule-based part only (no judge)",
            "f199b98e178e5a2a20e7048f5dcb0464",
        ),
        Benchmark(
            "OCRBench",
            "VQA",
            "ocrbench",
            _ANSWER + ("category",),
            "Final Score",
            "OCR in 10 task types, substring hits out of 1000",
            "e953d98a987cc6e26ef717b61260b778",
        ),
        Benchmark(
            "TextVQA_VAL",
            "VQA",
            "textvqa",
            _ANSWER,
            "Overall",
            "reading text in natural images, VQA accuracy",
            "b233b31f551bbf4056f2f955da3a92cd",
        ),
        Benchmark(
            "DocVQA_VAL",
            "VQA",
            "docvqa",
            _ANSWER,
            "Overall",
            "document questions, ANLS",
            "d5ee77e1926ff10690d469c56b73eabf",
        ),
        # The demo world's sets (`minicpmv synth --benchmarks`), scored by the same rules
        Benchmark("demo_yorn", "Y/N", "yes_no", _ANSWER, "Overall", "demo world: yes/no about objects (POPE-style)"),
        Benchmark(
            "demo_mcq",
            "MCQ",
            "mcq",
            _ANSWER + ("A", "B"),
            "split=none|Overall",
            "demo world: colour, shape and count as 4-option MCQ",
        ),
        Benchmark(
            "demo_vqa", "VQA", "docvqa", _ANSWER, "Overall", "demo world: short answers about its documents (ANLS)"
        ),
        Benchmark(
            "demo_caption",
            "Caption",
            "chair",
            ("question", "objects"),
            "CHAIRi",
            "demo world: describe the image; CHAIR hallucination against its object list",
        ),
    ]
}
DEMO_SETS = ("demo_yorn", "demo_mcq", "demo_vqa", "demo_caption")


def get_benchmark(name: str) -> Benchmark:
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    folded = {k.lower(): v for k, v in BENCHMARKS.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise TableError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
