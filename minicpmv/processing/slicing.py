"""Adaptive visual encoding geometry (paper §2.1; docs/preprocessing.md), as pure functions.

Sizes are (width, height) like PIL; patch grids and `tgt_sizes` are (rows, cols). Every decision
reproduces the official MiniCPM-V image processor bit for bit, including its float arithmetic,
Python's round-half-to-even and the strict "first minimum wins" tie order, because ports that
"simplify" these rules are the most common source of wrong answers in other runtimes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import PromptError

Size = tuple[int, int]  # (width, height)
Grid = tuple[int, int]  # (cols, rows)

SCALE_RESOLUTION = 448
PATCH_SIZE = 14
MAX_SLICE_NUMS = 9


def ensure_divide(length: float, patch_size: int) -> int:
    """Round `length` to the nearest multiple of `patch_size` (half to even), at least one patch.

    Example: ensure_divide(63, 14) == 56 because round(4.5) == 4.
    """
    return max(round(length / patch_size) * patch_size, patch_size)


def find_best_resize(
    size: tuple[float, float],
    scale_resolution: int = SCALE_RESOLUTION,
    patch_size: int = PATCH_SIZE,
    allow_upscale: bool = False,
    multiple: int | None = None,
) -> Size:
    """Size that keeps the aspect ratio, has about `scale_resolution`² pixels and divides by patches.

    Images already smaller than scale_resolution² keep their size (then only rounded to patch
    multiples) unless `allow_upscale`. The truncations (`int`) are the official ones.

    Args:
        size: (width, height); floats are allowed (slice cells of a refined grid).
        scale_resolution: side of the square whose area is the target.
        patch_size: vision patch side; both results are multiples of it.
        allow_upscale: resize images smaller than the target area too.
        multiple: what both sides are rounded to (default patch_size; 4.6/4.7 round to the
            patches their mergers fold together: 56 = 14x4 in 16x mode, 28 in 4x mode).
    Returns:
        (width, height) in pixels.
    """
    width, height = size
    if width * height > scale_resolution * scale_resolution or allow_upscale:
        aspect = width / height
        height = int(scale_resolution / math.sqrt(aspect))
        width = int(height * aspect)
    multiple = multiple or patch_size
    return ensure_divide(width, multiple), ensure_divide(height, multiple)


def candidate_grids(max_slice_nums: int, multiple: int) -> list[Grid]:
    """Grids with multiple-1, multiple or multiple+1 cells, in the official listing order.

    Counts of 1 and counts above `max_slice_nums` are skipped. For each count n the grids are
    (m, n/m) for every divisor m ascending, m being the number of columns.
    """
    grids = []
    for count in (multiple - 1, multiple, multiple + 1):
        if count == 1 or count > max_slice_nums:
            continue
        grids.extend((cols, count // cols) for cols in range(1, count + 1) if count % cols == 0)
    return grids


def slice_limit(value, default: int = MAX_SLICE_NUMS) -> int:
    """`max_slice_nums` as given, or `default` when None: the one place it is checked
    (PromptError unless a positive integer)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PromptError(f"max_slice_nums must be a positive integer, got {value!r}")
    return value


def choose_grid(
    size: Size, max_slice_nums: int = MAX_SLICE_NUMS, scale_resolution: int = SCALE_RESOLUTION
) -> Grid | None:
    """The slice grid (cols, rows) for an image, or None when the image is not sliced.

    The number of slices follows the area (in units of scale_resolution²) capped at
    `max_slice_nums`; among grids with one slice fewer, as many, or one more, the grid whose
    log aspect ratio is closest to the image's wins, the first one listed on ties.
    """
    width, height = size
    max_slice_nums = slice_limit(max_slice_nums)
    log_ratio = math.log(width / height)
    area_ratio = width * height / (scale_resolution * scale_resolution)
    multiple = min(math.ceil(area_ratio), max_slice_nums)
    if multiple <= 1:
        return None
    best, best_error = None, float("inf")
    for cols, rows in candidate_grids(max_slice_nums, multiple):
        error = abs(log_ratio - math.log(cols / rows))
        if error < best_error:  # strict: the first minimum wins
            best, best_error = (cols, rows), error
    return best


def refine_size(
    size: Size,
    grid: Grid,
    scale_resolution: int = SCALE_RESOLUTION,
    patch_size: int = PATCH_SIZE,
    multiple: int | None = None,
) -> Size:
    """Size the original image is resized to before it is cut into `grid` equal slices.

    The image is first rounded to a multiple of the grid counts (not of the patch size), then
    each cell gets the best upscaling-allowed resize, so every slice has about
    scale_resolution² pixels and divides into patches.
    """
    width, height = size
    cols, rows = grid
    cell_width = ensure_divide(width, cols) / cols
    cell_height = ensure_divide(height, rows) / rows
    best_width, best_height = find_best_resize(
        (cell_width, cell_height), scale_resolution, patch_size, allow_upscale=True, multiple=multiple
    )
    return best_width * cols, best_height * rows


@dataclass(frozen=True)
class SlicePlan:
    """Every decision for one image: the overview crop, the grid and the slices.

    Crops are ordered overview first, then slices row by row (top to bottom, left to right).
    """

    size: Size
    max_slice_nums: int
    grid: Grid | None
    source_size: Size
    refine_size: Size | None
    patch_size: int = PATCH_SIZE
    slice_size: Size | None = field(default=None)

    @property
    def num_slices(self) -> int:
        return 0 if self.grid is None else self.grid[0] * self.grid[1]

    @property
    def num_crops(self) -> int:
        return 1 + self.num_slices

    @property
    def slice_sizes(self) -> list[Size]:
        return [self.slice_size] * self.num_slices if self.slice_size else []

    @property
    def crop_sizes(self) -> list[Size]:
        return [self.source_size, *self.slice_sizes]

    @property
    def tgt_sizes(self) -> list[tuple[int, int]]:
        """(rows, cols) of patches per crop."""
        return [(h // self.patch_size, w // self.patch_size) for w, h in self.crop_sizes]

    def slice_boxes(self) -> list[tuple[int, int, int, int]]:
        """PIL crop boxes (left, top, right, bottom) of the slices in the refined image."""
        if self.grid is None:
            return []
        cols, rows = self.grid
        slice_width, slice_height = self.slice_size
        return [
            (c * slice_width, r * slice_height, (c + 1) * slice_width, (r + 1) * slice_height)
            for r in range(rows)
            for c in range(cols)
        ]


def square_plan(size: Size, scale_resolution: int = SCALE_RESOLUTION, patch_size: int = PATCH_SIZE) -> SlicePlan:
    """1.0's geometry: one view resized to scale_resolution x scale_resolution, aspect ignored."""
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    side = ensure_divide(scale_resolution, patch_size)
    return SlicePlan(size, 1, None, (side, side), None, patch_size)


def plan_slices(
    size: Size,
    max_slice_nums: int = MAX_SLICE_NUMS,
    scale_resolution: int = SCALE_RESOLUTION,
    patch_size: int = PATCH_SIZE,
    multiple: int | None = None,
) -> SlicePlan:
    """Decide how an image of `size` (width, height) is encoded.

    Unsliced images become one crop resized (up or down) to about scale_resolution²; sliced ones
    get a downscaled overview plus grid slices cut from the refined resize of the original.
    `max_slice_nums` = 1 means a single view. `multiple`: see find_best_resize.
    """
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    grid = choose_grid(size, max_slice_nums, scale_resolution)
    if grid is None:
        source = find_best_resize(size, scale_resolution, patch_size, allow_upscale=True, multiple=multiple)
        return SlicePlan(size, max_slice_nums, None, source, None, patch_size)
    source = find_best_resize(size, scale_resolution, patch_size, allow_upscale=False, multiple=multiple)
    refined = refine_size(size, grid, scale_resolution, patch_size, multiple)
    slice_size = (refined[0] // grid[0], refined[1] // grid[1])
    return SlicePlan(size, max_slice_nums, grid, source, refined, patch_size, slice_size)
