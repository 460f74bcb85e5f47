"""Image placeholder text and image bounds, the three official schemas (docs/preprocessing.md).

Q = query_num copies of `<unk>` stand for one crop's resampler outputs:
- 2.6: [<image_id>i</image_id>] <image>U^Q</image> then slice rows joined by "\\n", each row
  `cols` times <slice>U^Q</slice>; no outer wrapper. 4.6/4.7 write the same with
  `<|image_pad|>` and, per crop, as many as its merged patches (rows * cols / 16 or / 4).
- 2.5: <image>U^Q</image> then, if sliced, <slice> rows of <image>U^Q</image> </slice>.
- 2.0: as 2.5, followed by the "\\n" that always separates the image from the text in 2.0
  prompts (the official chat() writes it after the placeholder; the processor port folds it in).
"""

from __future__ import annotations

import re

from ..errors import PromptError
from ..versions import facts
from .config import ProcessorConfig
from .slicing import SlicePlan

IMAGE_TAG = "(<image>./</image>)"


def reserved_markers(config: ProcessorConfig) -> tuple[str, ...]:
    """Strings that only placeholders may hold: in a message's text they would be read as an image
    span with no image behind it (or with another request's features in a batch)."""
    return (
        IMAGE_TAG,
        config.im_start,
        config.im_end,
        config.slice_start,
        config.slice_end,
        config.unk,
        config.im_id_start,
        config.im_id_end,
    )


def refuse_marker_text(texts, config: ProcessorConfig) -> None:
    """PromptError naming the first reserved marker found in `texts` (index, text) pairs."""
    markers = reserved_markers(config)
    for index, text in texts:
        found = next((marker for marker in markers if marker in text), None)
        if found is not None:
            raise PromptError(
                f"message {index}: the text contains {found!r}, an image marker this model keeps "
                "for image placeholders; send images as image parts"
            )


def image_placeholder(
    plan: SlicePlan, config: ProcessorConfig, image_index: int = 0, use_image_id: bool | None = None
) -> str:
    """The text that stands for one image in the prompt.

    Args:
        plan: the image's slice plan.
        config: processor settings (version, query_num and the marker strings).
        image_index: 0-based index of the image within its prompt (2.6 `<image_id>`).
        use_image_id: override config.use_image_id; ignored outside 2.6.
    """
    overview_tokens, *slice_tokens = (config.crop_tokens(size) for size in plan.tgt_sizes)
    image_span = f"{config.im_start}{config.unk * overview_tokens}{config.im_end}"
    schema = facts(config.version)
    if schema.placeholder_schema == "ids":
        # the slices of a plan share one size, hence one token count
        slice_span = f"{config.slice_start}{config.unk * (slice_tokens or [0])[0]}{config.slice_end}"
        text = image_span + _grid_text(plan, slice_span)
        with_id = config.use_image_id if use_image_id is None else bool(use_image_id)
        if with_id:
            text = f"{config.im_id_start}{image_index}{config.im_id_end}" + text
        return text
    text = image_span
    if plan.grid is not None:
        text += config.slice_start + _grid_text(plan, image_span) + config.slice_end
    return text + "\n" if schema.newline_after_image else text


def _grid_text(plan: SlicePlan, span: str) -> str:
    if plan.grid is None:
        return ""
    cols, rows = plan.grid
    return "\n".join(span * cols for _ in range(rows))


def compact_placeholder(text: str, unk: str = "<unk>") -> str:
    """Run-length form for people: `<unk><unk>...` becomes `<unk>*64`."""
    return re.sub(f"(?:{re.escape(unk)})+", lambda m: f"{unk}*{len(m.group(0)) // len(unk)}", text)


def expand_image_tags(prompt: str, placeholders: list[str], skipped: set[int] = frozenset()) -> str:
    """Replace each `(<image>./</image>)` tag, in order, by its image's placeholder.

    skipped: images that stand in their group's placeholder (4.5 video frames): their tag goes
    and the text before it is stripped, as the official processor does.
    """
    chunks = prompt.split(IMAGE_TAG)
    if len(chunks) - 1 != len(placeholders):
        raise PromptError(
            f"the prompt has {len(chunks) - 1} image tag(s) {IMAGE_TAG} but {len(placeholders)} image(s) were given"
        )
    pieces = []
    for index, (placeholder, chunk) in enumerate(zip(placeholders, chunks)):
        pieces += [chunk.strip(), ""] if index in skipped else [chunk, placeholder]
    pieces.append(chunks[-1])
    return "".join(pieces)


def find_image_bounds(
    input_ids: list[int], start_ids: set[int], end_ids: set[int], span_lengths: int | list[int]
) -> list[tuple[int, int]]:
    """[start, end) of every image-feature span: just after each start marker to its end marker.

    span_lengths: every span's length (a resampler's query_num), or each span's in order (4.6/4.7
    crops differ). Unlike the official code, a marker without a partner or a span of the wrong
    length (marker tokens typed into the text, or a cut prompt) is an error instead of a silent
    misalignment.
    """
    starts = [i + 1 for i, token in enumerate(input_ids) if token in start_ids]
    ends = [i for i, token in enumerate(input_ids) if token in end_ids]
    bounds = list(zip(starts, ends))
    lengths = [span_lengths] * len(bounds) if isinstance(span_lengths, int) else list(span_lengths)
    if len(starts) != len(ends) or [end - start for start, end in bounds] != lengths:
        raise PromptError(
            "image marker tokens do not form the image spans expected "
            f"(found {len(starts)} start and {len(ends)} end markers); "
            "is an image marker such as <image> or <slice> typed into the text?"
        )
    return bounds
