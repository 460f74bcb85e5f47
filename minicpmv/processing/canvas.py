"""4.7's canvas positions: M-RoPE (T, H, W) position ids that lay each image's tokens out on a
2-D canvas, as a pure function of the token ids and the images' layouts.

- Text is 1-D (T = H = W, counting up).
- An image starts at the next position o: every token of it (markers included) has T = o. The
  `<image>` marker sits at H = W = o - 1; the thumbnail's tokens are stretched over the canvas of
  the slices (H = o + round(linspace(0, canvas_h - 1, rows)), torch's round-half-to-even; plain
  aranges without slices); `</image>` sits at (o + canvas_h, o + canvas_w); each slice's tokens
  at its offset on the canvas, `<slice>` at the slice's top-left, `</slice>` at its bottom-right,
  and a "\\n" between slice rows at (last row of the row that ended, right edge + 1).
- The markers and newlines right after an image belong to it (T = H = W = o); text after the
  image resumes at o + max(canvas_h, canvas_w) + 1.
- Images separated only by markers and newlines (video frames) form one group: the tokens
  between two frames count as text and leave one position free after them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageLayout:
    """One image in the token sequence.

    spans: [start, end) of each crop's tokens, the thumbnail first, then the slices row-major.
    grids: (rows, cols) of tokens of each span. slice_grid: (rows, cols) of slices, or None.
    """

    spans: list[tuple[int, int]]
    grids: list[tuple[int, int]]
    slice_grid: tuple[int, int] | None


def canvas_positions(
    input_ids: list[int], images: list[ImageLayout], structural: set[int], newline: int
) -> torch.Tensor:
    """(3, T) position ids of one prompt."""
    length = len(input_ids)
    out = torch.zeros((3, length), dtype=torch.long)
    pos, cursor = 0, 0
    for group in _groups(input_ids, images, structural | {newline}):
        for index, image in enumerate(group):
            start = image.spans[0][0] - 1  # the <image> marker
            if start > cursor:
                out[:, cursor:start] = torch.arange(pos, pos + start - cursor)
                # between frames of one group one position stays free (none before the group)
                pos += start - cursor + (1 if index else 0)
            end = _end(input_ids, image, structural | {newline})
            pos = _place_image(out, image, input_ids, start, end, pos, newline)
            cursor = end
    out[:, cursor:] = torch.arange(pos, pos + length - cursor)
    return out


def _end(input_ids: list[int], image: ImageLayout, glue: set[int]) -> int:
    """Index after an image: after its last span and the markers and newlines that follow it."""
    end = image.spans[-1][1]
    while end < len(input_ids) and input_ids[end] in glue:
        end += 1
    return end


def _groups(input_ids: list[int], images: list[ImageLayout], glue: set[int]) -> list[list[ImageLayout]]:
    """Consecutive images with only markers and newlines between them share a group."""
    groups: list[list[ImageLayout]] = []
    for image in images:
        if groups:
            previous = groups[-1][-1]
            between = input_ids[previous.spans[-1][1] : image.spans[0][0] - 1]
            if all(token in glue for token in between):
                groups[-1].append(image)
                continue
        groups.append([image])
    return groups


def _place_image(
    out: torch.Tensor, image: ImageLayout, ids: list[int], start: int, end: int, base: int, newline: int
) -> int:
    """Fill one image's positions in [start, end); return the position after it."""
    (thumb_start, thumb_end), (thumb_rows, thumb_cols) = image.spans[0], image.grids[0]
    slices, slice_grids = image.spans[1:], image.grids[1:]
    if slices:
        grid_rows, grid_cols = image.slice_grid
        slice_rows, slice_cols = slice_grids[0]
        height, width = grid_rows * slice_rows, grid_cols * slice_cols
        h = torch.linspace(0, height - 1, thumb_rows).round().long()
        w = torch.linspace(0, width - 1, thumb_cols).round().long()
    else:
        height, width = max(thumb_rows, 1), max(thumb_cols, 1)
        h, w = torch.arange(thumb_rows), torch.arange(thumb_cols)
    out[:, start:end] = base
    out[1:, start] = max(base - 1, 0)
    if thumb_end < end:
        out[1, thumb_end], out[2, thumb_end] = base + height, base + width
    _fill_grid(out, thumb_start, thumb_end, base + h, base + w)
    for k, ((s_start, s_end), (rows, cols)) in enumerate(zip(slices, slice_grids)):
        top, left = base + (k // grid_cols) * slice_rows, base + (k % grid_cols) * slice_cols
        out[1, s_start - 1], out[2, s_start - 1] = top, left
        if s_end < end:
            out[1, s_end], out[2, s_end] = top + rows - 1, left + cols - 1
        _fill_grid(out, s_start, s_end, top + torch.arange(rows), left + torch.arange(cols))
        last_in_row = (k + 1) % grid_cols == 0 and k + 1 < len(slices)
        if last_in_row:  # the newlines before the next row's <slice>
            for p in range(s_end + 1, slices[k + 1][0] - 1):
                if ids[p] == newline:
                    out[1, p], out[2, p] = top + slice_rows - 1, base + width
    return base + max(height, width) + 1


def _fill_grid(out: torch.Tensor, start: int, end: int, rows: torch.Tensor, cols: torch.Tensor) -> None:
    """H and W of a span's tokens laid out row-major on the given row and column positions."""
    out[1, start:end] = rows[:, None].expand(len(rows), len(cols)).reshape(-1)
    out[2, start:end] = cols[None, :].expand(len(rows), len(cols)).reshape(-1)
