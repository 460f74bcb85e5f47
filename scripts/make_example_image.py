"""Draw the bundled example image (minicpmv/assets/example.png): a wide, high-resolution scene with
shapes and a small receipt, so that `make demo` shows adaptive slicing at work.

Deterministic; run from the repository root: `python scripts/make_example_image.py`.
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parents[1] / "minicpmv" / "assets" / "example.png"


def draw() -> Image.Image:
    image = Image.new("RGB", (1344, 896), (236, 240, 245))
    pen = ImageDraw.Draw(image)
    pen.ellipse((80, 120, 380, 420), fill=(220, 50, 47))
    pen.rectangle((460, 160, 720, 420), fill=(38, 139, 210))
    pen.polygon([(900, 420), (1040, 140), (1180, 420)], fill=(133, 153, 0))
    receipt = (420, 500, 924, 860)
    pen.rectangle(receipt, fill=(255, 255, 255), outline=(90, 90, 90), width=3)
    font = ImageFont.load_default(size=26)
    lines = [
        "CORNER SHOP",
        "apples      2 x 1.20   2.40",
        "bread       1 x 2.10   2.10",
        "milk        1 x 0.95   0.95",
        "TOTAL                  5.45",
    ]
    for row, text in enumerate(lines):
        pen.text((450, 520 + 62 * row), text, fill=(20, 20, 20), font=font)
    return image


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    draw().save(OUT, optimize=True)
    print(f"wrote {OUT}")
