"""Text normalisation shared by the scorers, with the quirks of the official VQA tool that
VLMEvalKit keeps (and so must we, for the same numbers)."""

from __future__ import annotations

import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# A period with no digit on either side goes ('23.' and '12:30.' keep theirs, as in VLMEvalKit)
_PERIOD = re.compile(r"(?<!\d)(\.)(?!\d)")
_PERIOD_COUNT = int(re.UNICODE)  # the tool passes re.UNICODE (32) as sub's count: at most 32 go

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})


def _contractions() -> dict[str, str]:
    """The VQA tool's table of apostrophe-less spellings -> contractions, as data.

    Words with one apostrophe are listed in their right spelling and looked up without it; words
    with two are listed with each half-spelling the tool knows. The tool also maps "somebody'd"
    backwards to "somebodyd" (kept), and lists capitalised keys ("Im", "Ive", "Id've") that never
    match its lower-cased words (left out)."""
    single = (
        "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd "
        "how'll how's isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock "
        "oughtn't shan't should've shouldn't somebody'll somebody's someone'd someone'll someone's "
        "something'd something'll that's there'd there're there's they'd they'll they're they've 'twas "
        "wasn't we've weren't what'll what're what's what've when's where'd where's where've who'd who'll "
        "who's who've why'll why're why's won't would've wouldn't y'all you'd you'll you're you've"
    )
    table = {word.replace("'", ""): word for word in single.split()}
    double = {
        "couldn't've": "couldnt've couldn'tve",
        "hadn't've": "hadnt've hadn'tve",
        "he'd've": "hed've he'dve",
        "it'd've": "itd've it'dve",
        "mightn't've": "mightnt've mightn'tve",
        "'ow's'at": "ow's'at 'ows'at 'ow'sat",
        "she'd've": "shed've she'dve",
        "shouldn't've": "shouldnt've shouldn'tve",
        "somebody'd've": "somebodyd've somebody'dve",
        "someone'd've": "someoned've someone'dve",
        "something'd've": "somethingd've something'dve",
        "there'd've": "thered've there'dve",
        "they'd've": "theyd've they'dve",
        "we'd've": "wed've we'dve",
        "who'd've": "whod've who'dve",
        "wouldn't've": "wouldnt've wouldn'tve",
        "y'all'll": "yall'll y'allll",
        "y'all'd've": "yall'd've y'alld've y'all'dve",
        "you'd've": "youd've you'dve",
    }
    for word, spellings in double.items():
        table.update({spelling: word for spelling in spellings.split()})
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS = _contractions()


def process_punctuation(text: str) -> str:
    """The VQA tool's punctuation step. Each mark is decided once, on the original text: deleted
    everywhere if it stands next to a space anywhere (or if any digit,digit comma exists), else
    replaced by a space everywhere; then periods with no digit beside them go (at most 32)."""
    out = text
    digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, _PERIOD_COUNT)


def digits_and_articles(text: str) -> str:
    """Lower-case, number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_vqa_answer(text: str) -> str:
    """VLMEvalKit's process_answer: whitespace, punctuation, then digits/articles/contractions."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return digits_and_articles(process_punctuation(text))


def levenshtein(a: str, b: str) -> int:
    if len(a) > len(b):
        a, b = b, a
    previous = list(range(len(a) + 1))
    for j, cb in enumerate(b):
        current = [j + 1]
        for i, ca in enumerate(a):
            current.append(previous[i] if ca == cb else 1 + min(previous[i], previous[i + 1], current[-1]))
        previous = current
    return previous[-1]
