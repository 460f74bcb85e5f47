"""Divide and conquer: a response -> atomic claims -> yes/no questions -> a labeler's verdict
per claim -> the response's score (minus the number of rejected claims).

The claim splitter and question rewriter are any instruct model prompted with SPLIT_PROMPT and
QUESTION_PROMPT (their outputs parsed by `parse_bullets`); `demo_claims` is a rule-based
splitter for the demo world's own description sentences, a splitter only: its claims are still
verified by the labeler."""

from __future__ import annotations

import re

from ..evaluation.chair import demo_objects

PROMPT_WORDS = 300  # the whole splitting prompt is cut to its first 300 words
YES_WORDS, NO_WORDS = ("yes", "Yes"), ("no", "No")
QUESTION_SUFFIX = " Please answer yes or no."

SPLIT_PROMPT = (
    "You are an expert at extracting facts from a question and its answer about an image. Rewrite the facts the "
    "answer states as self-contained sentences, one fact each; leave out opinions and subjective statements.\n"
    "Write them in this format:\n### Facts:\n- first fact\n- second fact\n\n"
    "Question: {question}\nAnswer: {answer}"
)
QUESTION_PROMPT = (
    "You are an expert at turning declarative sentences into general (yes/no) questions. Turn the sentences below "
    "into questions one by one, without changing their tense or adding anything. If a sentence contains not, no or "
    "another negative word, its question must keep that negation.\n"
    "Write them in this format:\n### Modified sentences:\n- first question\n- second question\n\n"
    "Sentences:\n{facts}"
)


def first_words(text: str, count: int = PROMPT_WORDS) -> str:
    """The text up to the end of its `count`-th whitespace-separated word (line breaks kept)."""
    words = list(re.finditer(r"\S+", text))
    return text if len(words) <= count else text[: words[count - 1].end()]


def split_prompt(question: str, answer: str) -> str:
    return first_words(SPLIT_PROMPT.format(question=question, answer=answer))


def question_prompt(facts: list[str]) -> str:
    return QUESTION_PROMPT.format(facts="\n".join(f"- {fact}" for fact in facts))


def parse_bullets(text: str) -> list[str]:
    """The bullet items of a splitter's output: every non-empty line without '###', its first
    character (the bullet) dropped, stripped."""
    return [line[1:].strip() for line in text.split("\n") if line.strip() and "###" not in line]


def verification_question(question: str) -> str:
    return question + QUESTION_SUFFIX


def claim_label(probabilities: dict[str, float]) -> int:
    """1 (the claim holds) if P(yes) + P(Yes) > P(no) + P(No), else 0; a tie rejects."""
    yes = sum(probabilities.get(w, 0.0) for w in YES_WORDS)
    no = sum(probabilities.get(w, 0.0) for w in NO_WORDS)
    return int(yes > no)


def response_score(labels: list[int]) -> int | None:
    """sum(labels) - len(labels) = -(rejected claims); None for a response with no claims."""
    return sum(labels) - len(labels) if labels else None


def demo_claims(answer: str) -> list[tuple[str, str]]:
    """(claim, yes/no question) per object a demo-world description names (rule-based splitter
    for the demo world's sentence forms; the labeler still judges each claim)."""
    return [(f"There is a {thing}.", f"Is there a {thing}?") for thing in demo_objects(answer)]
