"""4.5's temporal groups, as pure functions: video frames packed into groups that share one
resampler output per slice position (`temporal_ids`, one time id per frame, in 0.1 s units).

- A sample's images are either all still (each crop its own group, time id -1) or all frames
  covered by `temporal_ids` (the official processor asserts one id per image).
- A group's crops are ordered slice-index-major: every frame's overview, then every frame's
  first slice, ... ; each of those is one output group (frames of a group slice alike).
- Only a group's first frame gets a placeholder; the text before each later frame is stripped.
"""

from __future__ import annotations

from ..errors import PromptError
from .pixels import EncodedImage


def check_temporal_ids(temporal_ids, images: int) -> list[list[int]]:
    """The groups of one sample, checked: non-empty lists of integer ids covering every image."""
    if not isinstance(temporal_ids, (list, tuple)) or not temporal_ids:
        raise PromptError("temporal_ids must be a non-empty list of groups of frame time ids")
    groups = []
    for group in temporal_ids:
        if (
            not isinstance(group, (list, tuple))
            or not group
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in group)
        ):
            raise PromptError(f"temporal_ids: each group must be a non-empty list of ids >= 0, got {group!r}")
        groups.append(list(group))
    covered = sum(len(g) for g in groups)
    if covered != images:
        raise PromptError(f"temporal_ids cover {covered} frame(s) but the prompt has {images} image(s)")
    return groups


def skipped_frames(groups: list[list[int]]) -> set[int]:
    """Image indices that get no placeholder: every frame of a group but its first."""
    skipped, start = set(), 0
    for group in groups:
        skipped.update(range(start + 1, start + len(group)))
        start += len(group)
    return skipped


def still_units(images: list[EncodedImage]) -> list[list[list[int]]]:
    """Encoding units of still images: per image, one group of time id -1 per crop."""
    return [[[-1] for _ in image.crops] for image in images]


def group_crops(images: list[EncodedImage], groups: list[list[int]]):
    """Crops, their sizes and the encoding units of frame groups (module docstring).

    Returns (crops, tgt_sizes rows, units): units[u] lists the output groups of frame group u,
    each the time ids of its crops.
    """
    crops, sizes, units, start = [], [], [], 0
    for group in groups:
        frames = images[start : start + len(group)]
        start += len(group)
        counts = {len(frame.crops) for frame in frames}
        if len(counts) != 1:
            raise PromptError("the frames of a temporal group must slice alike (same size)")
        unit = []
        for position in range(counts.pop()):  # slice-index-major
            for frame in frames:
                crops.append(frame.crops[position])
                sizes.append(frame.tgt_sizes[position].tolist())
            unit.append(list(group))
        units.append(unit)
    return crops, sizes, units
