"""Scenes of coloured shapes with their exact object list (the ground truth for captions, VQA
and, later, hallucination checks). Everything follows from a seed."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 119, 180),
    "yellow": (240, 200, 30),
    "purple": (148, 103, 189),
    "orange": (255, 127, 14),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 0.22, "large": 0.36}  # fraction of the shorter image side: large enough for a small encoder to see
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six"]
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "center", "right")
LABELS = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "row": ROWS, "column": COLUMNS}
# what each of the nine regions (rows, then columns) holds: a region label has one class per region
REGION_CONTENTS = ("none", *(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES))
REGION_LABELS = {"regions": REGION_CONTENTS}
OBJECT_GRID = 8  # blocks a side: one per resampler query of 64 (object_grid_example)
OBJECT_LABELS = {"objects": REGION_CONTENTS}  # what each block of the grid holds


@dataclass(frozen=True)
class Thing:
    shape: str
    colour: str
    size: str
    x: float  # centre, as a fraction of the width
    y: float

    @property
    def row(self) -> str:
        return "top" if self.y < 1 / 3 else "bottom" if self.y > 2 / 3 else "middle"

    @property
    def column(self) -> str:
        return "left" if self.x < 1 / 3 else "right" if self.x > 2 / 3 else "center"

    @property
    def place(self) -> str:
        """Where it is, in words: one of nine regions."""
        return "center" if (self.row, self.column) == ("middle", "center") else f"{self.row} {self.column}"

    def labels(self) -> dict[str, str]:
        """Every property, by name (the classes of each: LABELS)."""
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "row": self.row, "column": self.column}


@dataclass
class Scene:
    things: list[Thing]
    width: int
    height: int
    background: tuple[int, int, int]

    def render(self) -> Image.Image:
        image = Image.new("RGB", (self.width, self.height), self.background)
        draw = ImageDraw.Draw(image)
        side = min(self.width, self.height)
        for thing in self.things:
            _draw(draw, thing, self.width, self.height, SIZES[thing.size] * side)
        return image


def random_scene(rng: random.Random, width: int = 448, height: int = 448, most: int = 4) -> Scene:
    """1..`most` shapes that do not overlap (placed by rejection), on a light background."""
    things: list[Thing] = []
    side = min(width, height)
    for _ in range(200):
        if len(things) >= rng.randint(1, most) and things:
            break
        size = rng.choice(list(SIZES))
        radius = SIZES[size] * side / 2
        x, y = rng.uniform(radius, width - radius) / width, rng.uniform(radius, height - radius) / height
        if all(
            math.hypot((x - t.x) * width, (y - t.y) * height) > radius + SIZES[t.size] * side / 2 + 6 for t in things
        ):
            things.append(Thing(rng.choice(SHAPES), rng.choice(list(COLOURS)), size, x, y))
    shade = rng.randint(225, 250)
    return Scene(things, width, height, (shade, shade, shade))


def one_object_example(rng: random.Random) -> tuple[Image.Image, dict[str, str]]:
    """A one-object scene and that object's properties (LABELS): vision pre-training data."""
    scene = random_scene(rng, most=1)
    return scene.render(), scene.things[0].labels()


def region_scene_example(
    rng: random.Random, width: int = 448, height: int = 448, most: int = 4
) -> tuple[Image.Image, dict[str, tuple[str, ...]]]:
    """1..`most` non-overlapping shapes, at most one per region of the 3x3 grid, and what each
    region holds ("none" or "red circle"), rows then columns: vision pre-training on several
    objects. One per region keeps every region's answer single; a centre may lie anywhere in its
    region, near the lines too, as in `random_scene`."""
    side = min(width, height)
    things: list[Thing] = []
    wanted = rng.randint(1, most)
    for _ in range(200):
        if len(things) >= wanted:
            break
        size = rng.choice(list(SIZES))
        radius = SIZES[size] * side / 2
        x, y = rng.uniform(radius, width - radius) / width, rng.uniform(radius, height - radius) / height
        thing = Thing(rng.choice(SHAPES), rng.choice(list(COLOURS)), size, x, y)
        if all(
            (t.row, t.column) != (thing.row, thing.column)
            and math.hypot((x - t.x) * width, (y - t.y) * height) > radius + SIZES[t.size] * side / 2 + 6
            for t in things
        ):
            things.append(thing)
    shade = rng.randint(225, 250)
    held = {(t.row, t.column): f"{t.colour} {t.shape}" for t in things}
    regions = tuple(held.get((row, column), "none") for row in ROWS for column in COLUMNS)
    return Scene(things, width, height, (shade, shade, shade)).render(), {"regions": regions}


def object_grid_example(
    rng: random.Random, side: int = 448, grid: int = OBJECT_GRID, least: float = 0.15
) -> tuple[Image.Image, dict[str, tuple[str, ...]]]:
    """A scene as `random_scene` draws them and what each block of a `grid` x `grid` split holds,
    rows then columns: the object ("green star") covering the most of the block if it covers at
    least `least` of it, else "none". Read token by token (one block per resampler query), it
    asks every token of an object to carry the object's shape as well as its colour: colour is
    in every patch, shape only in the outline, and the model asked "what colour is the star?"
    named another object's colour in one multi-object scene in five (research/demo-model-log.md)."""
    scene = random_scene(rng, side, side)
    masks = Image.new("L", (side, side), 0)  # each object drawn in its own index, 1 up
    draw = ImageDraw.Draw(masks)
    for index, thing in enumerate(scene.things, start=1):
        _draw(draw, thing, side, side, SIZES[thing.size] * side, fill=index)
    block = side // grid
    held = []
    for row in range(grid):
        for column in range(grid):
            counts = masks.crop((column * block, row * block, (column + 1) * block, (row + 1) * block)).histogram()
            index = max(range(1, len(scene.things) + 1), key=counts.__getitem__)
            covered = counts[index] >= least * block * block
            held.append(f"{scene.things[index - 1].colour} {scene.things[index - 1].shape}" if covered else "none")
    return scene.render(), {"objects": tuple(held)}


def _draw(
    draw: ImageDraw.ImageDraw,
    thing: Thing,
    width: int,
    height: int,
    diameter: float,
    fill: int | tuple[int, int, int] | None = None,
) -> None:
    cx, cy, r = thing.x * width, thing.y * height, diameter / 2
    fill = COLOURS[thing.colour] if fill is None else fill
    if thing.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif thing.shape == "square":
        draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
    elif thing.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=fill)
    else:  # a five-pointed star
        points = [
            (
                cx + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
                cy - (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5),
            )
            for i in range(10)
        ]
        draw.polygon(points, fill=fill)


def plural(shape: str, count: int) -> str:
    return shape if count == 1 else shape + "s"


def caption(scene: Scene) -> str:
    """Every object, in reading order: 'a large red circle at the top left, ...'."""
    ordered = sorted(scene.things, key=lambda t: (round(t.y * 3), t.x))
    parts = [f"a {t.size} {t.colour} {t.shape} at the {t.place}" for t in ordered]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def questions(scene: Scene, rng: random.Random) -> list[tuple[str, str, str]]:
    """(task, question, answer) about the scene: colour, shape, count and position questions
    whose answers are unambiguous from the object list."""
    result = []
    by_shape = {shape: [t for t in scene.things if t.shape == shape] for shape in SHAPES}
    asked = rng.choice(SHAPES)
    result.append(("count", f"How many {plural(asked, 2)} are there?", NUMBER_WORDS[len(by_shape[asked])]))
    unique = [t for t in scene.things if len(by_shape[t.shape]) == 1]
    if unique:
        thing = rng.choice(unique)
        result.append(("colour", f"What colour is the {thing.shape}?", thing.colour))
        result.append(("position", f"Where is the {thing.shape}?", f"at the {thing.place}"))
    single_colour = [t for t in scene.things if sum(u.colour == t.colour for u in scene.things) == 1]
    if single_colour:
        thing = rng.choice(single_colour)
        result.append(("shape", f"What shape is {thing.colour}?", thing.shape))
    # any colour, present or not: asked only of absent ones, "zero" would need no looking
    colour = rng.choice(sorted(COLOURS))
    result.append(
        ("count", f"How many {colour} things are there?", NUMBER_WORDS[sum(t.colour == colour for t in scene.things)])
    )
    result.append(("count", "How many shapes are there?", NUMBER_WORDS[len(scene.things)]))
    return result


def survey_questions(scene: Scene) -> list[tuple[str, str, str]]:
    """Every question `questions` could ask of the scene, not one drawn of each kind: the colour
    and place of each shape the scene holds once, the shape of each colour it holds once, the
    count of each shape, of each colour present and of one absent colour, and of all shapes.
    More binding per image for the small LLM (which colour belongs to which shape) than the
    one colour question of `questions`."""
    result = []
    for shape in SHAPES:
        holding = [t for t in scene.things if t.shape == shape]
        result.append(("count", f"How many {plural(shape, 2)} are there?", NUMBER_WORDS[len(holding)]))
        if len(holding) == 1:
            result.append(("colour", f"What colour is the {shape}?", holding[0].colour))
            result.append(("position", f"Where is the {shape}?", f"at the {holding[0].place}"))
    present = sorted({t.colour for t in scene.things})
    for colour in present:
        holding = [t for t in scene.things if t.colour == colour]
        if len(holding) == 1:
            result.append(("shape", f"What shape is {colour}?", holding[0].shape))
        result.append(("count", f"How many {colour} things are there?", NUMBER_WORDS[len(holding)]))
    absent = [colour for colour in COLOURS if colour not in present]
    if absent:
        result.append(("count", f"How many {absent[len(scene.things) % len(absent)]} things are there?", "zero"))
    result.append(("count", "How many shapes are there?", NUMBER_WORDS[len(scene.things)]))
    return result


PLACES = ("center", *(f"{row} {column}" for row in ROWS for column in COLUMNS if (row, column) != ("middle", "center")))


def claim_text(size: str, colour: str, shape: str, place: str) -> str:
    """The yes/no question a description's object becomes (`minicpmv.alignment.feedback.demo_claims`)."""
    return f"Is there a {size} {colour} {shape} at the {place}?"


def verify_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """(question, "Yes"/"No") about each object: its own claim, and the claim with one of size,
    colour, shape or place changed so that no object of the scene fits it. What a labeler is
    asked in the alignment loop (RLAIF-V's verification questions, + " Please answer yes or no.")."""
    held = {(t.size, t.colour, t.shape, t.place) for t in scene.things}
    result = []
    for thing in scene.things:
        true = (thing.size, thing.colour, thing.shape, thing.place)
        result.append((claim_text(*true) + " Please answer yes or no.", "Yes"))
        for _ in range(20):
            changed = list(true)
            slot = rng.randrange(4)
            changed[slot] = rng.choice(
                [v for v in (tuple(SIZES), tuple(COLOURS), SHAPES, PLACES)[slot] if v != true[slot]]
            )
            if tuple(changed) not in held:
                result.append((claim_text(*changed) + " Please answer yes or no.", "No"))
                break
    rng.shuffle(result)
    return result
