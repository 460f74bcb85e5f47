"""High-resolution documents whose text is too small to read from one 448-px view: receipts,
forms, tables, and signs or banners of extreme aspect ratio (9:1 and 1:9). Each comes with the
exact text it shows and where each character is. Text uses Pillow's built-in scalable font (no
font files needed).

Sizes follow the paper's regime: pages of 0.8-1.8 megapixels with text about 22 px high, so that
one 448-px view (about 200k pixels: a 2.5x or larger downscale) leaves it 9 px high or less,
while adaptive slicing keeps it at full size.

Pages are monospaced (a till printer's or a typewriter's): one character per 28-px cell of a
grid that is the demo encoder's patch grid, on pages made of whole 448-px slices, which the
processor's slicing cuts without resizing (tested). So every character falls in one patch of
one slice. Text that meets the patches at any phase, two characters to a patch, was not learnt
by the from-scratch encoder within the CPU budget (research/demo-model-log.md, "Reading: a probe")."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

ITEMS = [
    "apple",
    "bread",
    "milk",
    "cheese",
    "coffee",
    "rice",
    "tea",
    "butter",
    "eggs",
    "juice",
    "soap",
    "pasta",
    "honey",
    "beans",
    "salt",
    "sugar",
    "lemon",
    "onion",
    "tomato",
    "yogurt",
]
WORDS = [
    "OPEN",
    "EXIT",
    "SALE",
    "HOTEL",
    "MARKET",
    "PARK",
    "NORTH",
    "RIVER",
    "CAFE",
    "STATION",
    "GARDEN",
    "BRIDGE",
    "LIBRARY",
    "MUSEUM",
    "HARBOR",
    "BAKERY",
]
NAMES = ["Ada Moreau", "Ben Okafor", "Chen Wei", "Dana Silva", "Eli Novak", "Fay Larsen", "Gus Patel", "Hana Ito"]


LINE_PLACES = 12  # characters of a text line example, padded with "none"
LINE_CHARACTERS = ("none", " ", ".", *string.digits, *sorted(set("".join(ITEMS))))
CELL = 28  # px: one character per cell; the demo encoder's patch size
CELL_TEXT_SIZE = 26  # capitals 18 px, with descenders 23 px: inside the cell
CELL_CHARACTERS = ("none", ".", ":", *string.digits, *string.ascii_uppercase, *string.ascii_lowercase)


@dataclass
class Document:
    kind: str  # receipt, form, table, sign
    image: Image.Image
    lines: list[str]  # the text, line by line, top to bottom
    facts: dict = field(default_factory=dict)  # answers: total, prices, fields, cells, sign text
    cells: dict[tuple[int, int], str] = field(default_factory=dict)  # (column, row) -> character shown there


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def write_cells(image: Image.Image, text: str, column: int, row: int, down: bool = False) -> dict:
    """Write `text` one character per cell from cell (column, row), rightwards (or downwards:
    a vertical sign's stacked letters); returns {(column, row): character} of the inked cells."""
    face, draw, cells = font(CELL_TEXT_SIZE), ImageDraw.Draw(image), {}
    for offset, character in enumerate(text):
        place = (column, row + offset) if down else (column + offset, row)
        if character != " ":
            left = place[0] * CELL + (CELL - round(face.getlength(character))) // 2
            draw.text((left, place[1] * CELL - 5), character, fill=(20, 20, 20), font=face)  # capitals at 3-21 px
            cells[place] = character
    return cells


def _page(lines: list[str], size: tuple[int, int], rng: random.Random) -> tuple[Image.Image, dict]:
    """Lines of text, one every other cell row, at a random cell of a page of `size` (width,
    height: whole slices); returns the page and its inked cells."""
    image = Image.new("RGB", size, (rng.randint(238, 255),) * 3)
    columns, rows = size[0] // CELL, size[1] // CELL
    width = max(len(line) for line in lines)
    left, top = rng.randint(1, columns - width - 1), rng.randint(1, rows - 2 * len(lines))
    cells = {}
    for number, line in enumerate(lines):
        cells.update(write_cells(image, line, left, top + 2 * number))
    return image, cells


def receipt(rng: random.Random) -> Document:
    count = rng.randint(3, 7)
    chosen = rng.sample(ITEMS, count)
    prices = {item: rng.randint(50, 1999) / 100 for item in chosen}
    total = round(sum(prices.values()), 2)
    lines = [f"SHOP {rng.randint(10, 99)}"] + [f"{item}  {price:.2f}" for item, price in prices.items()]
    lines.append(f"TOTAL  {total:.2f}")
    image, cells = _page(lines, (896, rng.choice((1344, 1792))), rng)  # portrait, like a till slip
    return Document(
        "receipt",
        image,
        lines,
        {"total": f"{total:.2f}", "prices": {item: f"{price:.2f}" for item, price in prices.items()}},
        cells,
    )


def form(rng: random.Random) -> Document:
    fields = {
        "name": rng.choice(NAMES),
        "date": f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.20{rng.randint(10, 30)}",
        "amount": f"{rng.randint(10, 9999)}",
        "code": f"{rng.choice('ABCDEFGH')}{rng.randint(100, 999)}",
    }
    lines = ["APPLICATION FORM"] + [f"{key.upper()}: {value}" for key, value in fields.items()]
    image, cells = _page(lines, (1344, 896), rng)
    return Document("form", image, lines, {"fields": fields}, cells)


def table(rng: random.Random) -> Document:
    rows, columns = rng.randint(2, 4), rng.randint(2, 4)
    cells = {(r, c): str(rng.randint(1, 99)) for r in range(rows) for c in range(columns)}
    header = "    " + "".join(f"{c + 1:>6}" for c in range(columns))
    lines = [header] + [f"{'ABCD'[r]:<4}" + "".join(f"{cells[r, c]:>6}" for c in range(columns)) for r in range(rows)]
    image, inked = _page(lines, (1344, rng.choice((896, 1344))), rng)
    return Document("table", image, lines, {"cells": {f"{'ABCD'[r]}{c + 1}": v for (r, c), v in cells.items()}}, inked)


def sign(rng: random.Random, vertical: bool | None = None) -> Document:
    """A banner of 9:1, 4032 x 448 pixels (or, when `vertical`, a 1:9 sign with the letters
    stacked downwards), with a word and a number written small in its middle."""
    vertical = rng.random() < 0.5 if vertical is None else vertical
    text = f"{rng.choice(WORDS)} {rng.randint(10, 999)}"
    image = Image.new(
        "RGB", (448, 4032) if vertical else (4032, 448), (rng.randint(180, 255), rng.randint(180, 255), 200)
    )
    along = rng.randint(7, 4032 // CELL - 7 - len(text))  # the cell the text starts at, along the sign
    across = rng.randint(6, 448 // CELL - 7)
    cells = write_cells(image, text, across, along, down=True) if vertical else write_cells(image, text, along, across)
    return Document("sign", image, [text], {"text": text}, cells)


QUESTIONS = {
    "total": "What is the total?",
    "price": "How much is the {}?",
    "line": "What is written on line {}?",
    "field": "What is the {} on the form?",
    "cell": "What number is in row {}, column {}?",
    "sign": "What does the sign say?",
}  # per task; the slots take the item, line, key or cell


def document_questions(document: Document, rng: random.Random) -> list[tuple[str, str, str]]:
    """(task, question, answer) about a document; answers are copied text, so exact match applies."""
    facts = document.facts
    if document.kind == "receipt":
        item = rng.choice(sorted(facts["prices"]))
        line = rng.randint(2, len(document.lines))
        return [
            ("total", QUESTIONS["total"], facts["total"]),
            ("price", QUESTIONS["price"].format(item), facts["prices"][item]),
            ("line", QUESTIONS["line"].format(line), document.lines[line - 1]),
        ]
    if document.kind == "form":
        key = rng.choice(sorted(facts["fields"]))
        return [("field", QUESTIONS["field"].format(key), facts["fields"][key])]
    if document.kind == "table":
        cell = rng.choice(sorted(facts["cells"]))
        return [("cell", QUESTIONS["cell"].format(cell[0], cell[1:]), facts["cells"][cell])]
    return [("sign", QUESTIONS["sign"], facts["text"])]


DOCUMENT_MAKERS = (receipt, form, table, sign)
DOCUMENT_WEIGHTS = (4, 2, 2, 2)  # receipts: the demo question
SLICE = 448  # px: pages are whole slices of this side (module docstring)


def random_document(rng: random.Random) -> Document:
    return rng.choices(DOCUMENT_MAKERS, weights=DOCUMENT_WEIGHTS)[0](rng)


def page_slices(document: Document) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom) of the 448-px slices the processor cuts the page into,
    row by row: the page is made of them, so no resize comes first (tested against the slicing)."""
    width, height = document.image.size
    return [(x, y, x + SLICE, y + SLICE) for y in range(0, height, SLICE) for x in range(0, width, SLICE)]


def slice_cells(document: Document, box: tuple[int, int, int, int]) -> tuple[str, ...]:
    """The character in each cell of a slice, row by row ("none" where blank): 16 x 16 places."""
    left, top, right, bottom = (edge // CELL for edge in box)
    return tuple(
        document.cells.get((column, row), "none") for row in range(top, bottom) for column in range(left, right)
    )


def slice_text(document: Document, box: tuple[int, int, int, int]) -> str:
    """What a slice shows, as text: its non-blank cell rows, top to bottom (blank cells inside a
    row become spaces)."""
    per_row = SLICE // CELL
    cells = slice_cells(document, box)
    rows = [
        "".join(" " if c == "none" else c for c in cells[start : start + per_row]).strip()
        for start in range(0, len(cells), per_row)
    ]
    return "\n".join(row for row in rows if row)


def page_slice_example(rng: random.Random) -> tuple[Image.Image, dict[str, tuple[str, ...]], str]:
    """One slice of a random document, as the processor cuts it, among those with text: the
    slice, its characters per cell (label "cells", classes CELL_CHARACTERS) and its text."""
    document = random_document(rng)
    box = rng.choice([box for box in page_slices(document) if any(c != "none" for c in slice_cells(document, box))])
    return document.image.crop(box), {"cells": slice_cells(document, box)}, slice_text(document, box)


def line_questions(document: Document) -> list[tuple[int, tuple[str, str, str]]]:
    """(line number, (task, question, answer)) for each line of a receipt or form whose value
    the world asks for by its word: an item's price, the total, a field."""
    facts = document.facts
    if document.kind == "receipt":
        asked = {
            f"{item}  {price}": ("price", QUESTIONS["price"].format(item), price)
            for item, price in facts["prices"].items()
        }
        asked[f"TOTAL  {facts['total']}"] = ("total", QUESTIONS["total"], facts["total"])
    elif document.kind == "form":
        asked = {
            f"{key.upper()}: {value}": ("field", QUESTIONS["field"].format(key), value)
            for key, value in facts["fields"].items()
        }
    else:
        return []
    return [(number, asked[line]) for number, line in enumerate(document.lines) if line in asked]


def fact_questions(document: Document) -> list[tuple[str, str, str]]:
    """(task, question, answer) for every fact a document question may ask about: each item's
    price and the total, each field, each cell (a sign has one fact, its text). One image asked
    all of them in one conversation gives the lookup by word many examples per encoded page."""
    if document.kind == "table":
        return [
            ("cell", QUESTIONS["cell"].format(cell[0], cell[1:]), value)
            for cell, value in document.facts["cells"].items()
        ]
    if document.kind == "sign":
        return [("sign", QUESTIONS["sign"], document.facts["text"])]
    return [question for _, question in line_questions(document)]


def slice_questions(document: Document) -> list[tuple[tuple[int, int, int, int], tuple[str, str, str]]]:
    """(slice box, (task, question, answer)) for each line of `line_questions` that lies whole
    inside one of the page's slices."""
    left = min(column for column, _ in document.cells)  # every line starts at the page's left cell
    top = min(row for _, row in document.cells)  # line k is on cell row top + 2k (_page)
    asked = line_questions(document)
    found = []
    for box in page_slices(document):
        first, upper, last, lower = (edge // CELL for edge in box)
        found += [
            (box, question)
            for number, question in asked
            if first <= left and left + len(document.lines[number]) <= last and upper <= top + 2 * number < lower
        ]
    return found


def slice_question_example(rng: random.Random) -> tuple[Image.Image, str, str]:
    """A slice of a receipt or form holding a whole line the world asks about, that line's
    question and its answer: the lookup of a document question (a line found by its word, its
    value copied) on one slice, where it is cheap to train."""
    while True:  # a page whose lines all cross a slice's edge has none: draw another
        document = rng.choices((receipt, form), weights=DOCUMENT_WEIGHTS[:2])[0](rng)
        found = slice_questions(document)
        if found:
            box, (_, question, answer) = rng.choice(found)
            return document.image.crop(box), question, answer


LINE_PLACEMENTS = ("fixed", "grid", "phase", "anywhere")
FIXED_PLACE = (8, 213)  # left middle of the slice
PATCH = 28  # the demo vision encoder's patch size: the grid "grid" moves by and "phase" moves within


def text_line_example(
    rng: random.Random, placement: str = "anywhere", text_size: int = 22, shift: int = PATCH - 1
) -> tuple[Image.Image, dict[str, tuple[str, ...]]]:
    """A receipt line ("pasta 2.72") at document size on a 448-px slice, and its characters one
    per place (LINE_PLACES, classes LINE_CHARACTERS): reading as a vision pre-training label.
    `placement` (LINE_PLACEMENTS) separates the two things a reader of a page's slices must cope
    with: "fixed" always at the left middle; "grid" anywhere, but moved by whole 28-px patches, so
    every letter meets the patch grid the same way; "phase" at the left middle moved by less than
    a patch, so the letters meet the grid differently each time; "anywhere" both, as on a page.
    `shift` (0 to 27 px) bounds the "phase" move: raised step by step, it is the curriculum that
    teaches a from-scratch encoder to read lines that do not sit on its grid (research/demo-model-log.md)."""
    if placement not in LINE_PLACEMENTS:
        raise ValueError(f"placement must be one of {LINE_PLACEMENTS}, not {placement!r}")
    if not 0 <= shift < PATCH:
        raise ValueError(f"shift must be 0 to {PATCH - 1} pixels, not {shift}")
    text = f"{rng.choice(ITEMS)} {rng.randint(50, 1999) / 100:.2f}"[:LINE_PLACES]
    image = Image.new("RGB", (448, 448), (rng.randint(238, 255),) * 3)
    face = font(text_size)
    width = face.getbbox(text)[2]
    left, top = FIXED_PLACE
    if placement == "anywhere":
        left, top = rng.randint(0, 440 - width), rng.randint(0, 410)
    elif placement == "grid":
        left, top = left + PATCH * rng.randint(0, (432 - width) // PATCH), top % PATCH + PATCH * rng.randint(0, 14)
    elif placement == "phase":
        left, top = left + rng.randint(0, shift), top + rng.randint(-((shift + 1) // 2), shift // 2)
    ImageDraw.Draw(image).text((left, top), text, fill=(20, 20, 20), font=face)
    return image, {"characters": tuple(text) + ("none",) * (LINE_PLACES - len(text))}
