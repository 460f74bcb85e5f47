"""High-resolution documents whose text is too small to read from one 448-px view: receipts,
forms, tables, and signs or banners of extreme aspect ratio (up to 10:1 and 1:10). Each comes
with the exact text it shows. Text uses Pillow's built-in scalable font (no font files needed).

Sizes follow the paper's regime: pages of about 1.2-2 megapixels with text about 22 px high, so
that one 448-px view (about 200k pixels: a 3x or larger downscale) leaves it 7 px high or less,
while adaptive slicing keeps it near full size."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

ITEMS = ["apple", "bread", "milk", "cheese", "coffee", "rice", "tea", "butter", "eggs", "juice", "soap", "pasta",
         "honey", "beans", "salt", "sugar", "lemon", "onion", "tomato", "yogurt"]
WORDS = ["OPEN", "EXIT", "SALE", "HOTEL", "MARKET", "PARK", "NORTH", "RIVER", "CAFE", "STATION", "GARDEN",
         "BRIDGE", "LIBRARY", "MUSEUM", "HARBOR", "BAKERY"]
NAMES = ["Ada Moreau", "Ben Okafor", "Chen Wei", "Dana Silva", "Eli Novak", "Fay Larsen", "Gus Patel", "Hana Ito"]


LINE_PLACES = 12  # characters of a text line example, padded with "none"
LINE_CHARACTERS = ("none", " ", ".", *string.digits, *sorted(set("".join(ITEMS))))


@dataclass
class Document:
    kind: str  # receipt, form, table, sign
    image: Image.Image
    lines: list[str]  # the text, line by line, top to bottom
    facts: dict = field(default_factory=dict)  # answers: total, prices, fields, cells, sign text


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _page(lines: list[str], size: tuple[int, int], text_size: int, rng: random.Random) -> Image.Image:
    """Lines of text, evenly spread down a page of `size` (width, height)."""
    face = font(text_size)
    image = Image.new("RGB", size, (rng.randint(238, 255),) * 3)
    draw = ImageDraw.Draw(image)
    step = min(int(text_size * 2.4), (size[1] - 2 * text_size) // max(1, len(lines)))
    top = (size[1] - step * len(lines)) // 2
    left = rng.randint(size[0] // 12, size[0] // 5)
    for row, line in enumerate(lines):
        draw.text((left, top + row * step), line, fill=(20, 20, 20), font=face)
    return image


def receipt(rng: random.Random, text_size: int = 22) -> Document:
    count = rng.randint(3, 7)
    chosen = rng.sample(ITEMS, count)
    prices = {item: rng.randint(50, 1999) / 100 for item in chosen}
    total = round(sum(prices.values()), 2)
    lines = [f"SHOP {rng.randint(10, 99)}"] + [f"{item}  {price:.2f}" for item, price in prices.items()]
    lines.append(f"TOTAL  {total:.2f}")
    image = _page(lines, (896, rng.choice((1344, 1568))), text_size, rng)  # portrait, like a till slip
    return Document("receipt", image, lines, {"total": f"{total:.2f}",
                                              "prices": {item: f"{price:.2f}" for item, price in prices.items()}})


def form(rng: random.Random, text_size: int = 22) -> Document:
    fields = {"name": rng.choice(NAMES), "date": f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.20{rng.randint(10, 30)}",
              "amount": f"{rng.randint(10, 9999)}", "code": f"{rng.choice('ABCDEFGH')}{rng.randint(100, 999)}"}
    lines = ["APPLICATION FORM"] + [f"{key.upper()}: {value}" for key, value in fields.items()]
    image = _page(lines, (1344, 896), text_size, rng)
    return Document("form", image, lines, {"fields": fields})


def table(rng: random.Random, text_size: int = 22) -> Document:
    rows, columns = rng.randint(2, 4), rng.randint(2, 4)
    cells = {(r, c): str(rng.randint(1, 99)) for r in range(rows) for c in range(columns)}
    header = "    " + "".join(f"{c + 1:>6}" for c in range(columns))
    lines = [header] + [f"{'ABCD'[r]:<4}" + "".join(f"{cells[r, c]:>6}" for c in range(columns)) for r in range(rows)]
    image = _page(lines, (1344, 1008), text_size, rng)
    return Document("table", image, lines, {"cells": {f"{'ABCD'[r]}{c + 1}": v for (r, c), v in cells.items()}})


def sign(rng: random.Random, vertical: bool | None = None, text_size: int = 26) -> Document:
    """A banner of 10:1 (or a vertical sign of 1:10 when `vertical`), 4480 x 448 pixels, with a
    word and a number written small in its middle."""
    vertical = rng.random() < 0.5 if vertical is None else vertical
    text = f"{rng.choice(WORDS)} {rng.randint(10, 999)}"
    face = font(text_size)
    left, top, right, bottom = face.getbbox(text)
    banner = Image.new("RGB", (4480, 448), (rng.randint(180, 255), rng.randint(180, 255), 200))
    x = rng.randint(200, 4480 - 200 - (right - left))
    ImageDraw.Draw(banner).text((x, (448 - (bottom - top)) // 2 - top), text, fill=(10, 10, 60), font=face)
    image = banner.rotate(90, expand=True) if vertical else banner
    return Document("sign", image, [text], {"text": text})


def document_questions(document: Document, rng: random.Random) -> list[tuple[str, str, str]]:
    """(task, question, answer) about a document; answers are copied text, so exact match applies."""
    facts = document.facts
    if document.kind == "receipt":
        item = rng.choice(sorted(facts["prices"]))
        line = rng.randint(2, len(document.lines))
        return [("total", "What is the total?", facts["total"]),
                ("price", f"How much is the {item}?", facts["prices"][item]),
                ("line", f"What is written on line {line}?", document.lines[line - 1])]
    if document.kind == "form":
        key = rng.choice(sorted(facts["fields"]))
        return [("field", f"What is the {key} on the form?", facts["fields"][key])]
    if document.kind == "table":
        cell = rng.choice(sorted(facts["cells"]))
        return [("cell", f"What number is in row {cell[0]}, column {cell[1:]}?", facts["cells"][cell])]
    return [("sign", "What does the sign say?", facts["text"])]


LINE_PLACEMENTS = ("fixed", "grid", "phase", "anywhere")
FIXED_PLACE = (8, 213)  # left middle of the slice
PATCH = 28  # the demo vision encoder's patch size: the grid "grid" moves by and "phase" moves within


def text_line_example(rng: random.Random, placement: str = "anywhere", text_size: int = 22,
                      shift: int = PATCH - 1) -> tuple[Image.Image, dict[str, tuple[str, ...]]]:
    """A receipt line ("pasta 2.72") at document size on a 448-px slice, and its characters one
    per place (LINE_PLACES, classes LINE_CHARACTERS): reading as a vision pre-training label.
    `placement` (LINE_PLACEMENTS) separates the two things a reader of a page's slices must cope
    with: "fixed" always at the left middle; "grid" anywhere, but moved by whole 28-px patches, so
    every letter meets the patch grid the same way; "phase" at the left middle moved by less than
    a patch, so the letters meet the grid differently each time; "anywhere" both, as on a page.
    `shift` (0 to 27 px) bounds the "phase" move: raised step by step, it is the curriculum that
    teaches a from-scratch encoder to read lines that do not sit on its grid (docs/demo-model.md)."""
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
