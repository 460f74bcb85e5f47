"""Video input as frames, two official recipes. Decoding uses PyAV, behind the `video` extra.

- "frames" (2.6): sample about `fps` frames per second, at most `max_frames` spread evenly;
  each frame is an image of the prompt (no `<image_id>`, 2 slices each).
- "packed" (4.5's model card): about `fps` (3) frames per second; a video longer than
  `max_frames` / fps seconds packs 2..`max_packing` consecutive frames into one group that the
  3-D resampler turns into 64 tokens; every frame carries its time on a 0.1 s grid
  (`temporal_ids`), one view per frame, no `<image_id>`.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from ..errors import ImageError

DEFAULT_FPS = 1.0
DEFAULT_MAX_FRAMES = 64
VIDEO_MAX_SLICE_NUMS = 2  # the official 2.6 video example: 2 slices per frame (1 if memory is short)
PACKED_FPS = 3.0  # 4.5's model card: choose_fps
PACKED_MAX_FRAMES = 180  # groups (frames after packing)
PACKED_MAX_PACKING = 3  # frames per group by default; the model card allows 1..6
MAX_PACKING = 6
TIME_SCALE = 0.1  # seconds per temporal id


def uniform_indices(count: int, keep: int) -> list[int]:
    """`keep` indices spread evenly over range(count), each the middle of its stretch."""
    if count <= keep:
        return list(range(count))
    gap = count / keep
    return [int(i * gap + gap / 2) for i in range(keep)]


def frame_indices(
    total: int, fps_in: float, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES
) -> list[int]:
    """Every round(fps_in / fps)-th of `total` frames, then at most max_frames of those spread evenly."""
    step = max(1, round(fps_in / fps)) if fps > 0 else 1
    candidates = list(range(0, total, step))
    return [candidates[i] for i in uniform_indices(len(candidates), max_frames)]


def packed_plan(
    total: int,
    fps_in: float,
    fps: float = PACKED_FPS,
    max_frames: int = PACKED_MAX_FRAMES,
    max_packing: int = PACKED_MAX_PACKING,
) -> tuple[list[int], list[list[int]]]:
    """4.5's video recipe: (frame indices, temporal_ids groups) for a video of `total` frames.

    Time ids are the frames' times snapped to the nearest 0.1 s step below the duration, then
    divided by 0.1 and truncated, in float64 as numpy computes them (0.7 s is id 7: the grid's
    0.7000000000000001 / 0.1 is just above 7).
    """
    if not 1 <= max_packing <= MAX_PACKING:
        raise ImageError(f"max_packing must be in 1..{MAX_PACKING}, got {max_packing}")
    duration = total / fps_in
    if fps * int(duration) <= max_frames:
        packing = 1
        chosen = round(min(fps, round(fps_in)) * min(max_frames, duration))
    else:
        packing = math.ceil(duration * fps / max_frames)
        chosen = round(duration * fps) if packing <= max_packing else round(max_frames * max_packing)
        packing = min(packing, max_packing)
    indices = uniform_indices(total, max(1, chosen))
    grid = np.arange(0, duration, TIME_SCALE)
    times = np.asarray(indices, dtype=np.float64) / fps_in
    nearest = grid[np.abs(grid[None, :] - times[:, None]).argmin(axis=1)]  # first of equals on a tie
    ids = (nearest / TIME_SCALE).astype(np.int32).tolist()
    return indices, [ids[i : i + packing] for i in range(0, len(ids), packing)]


def frame_groups(count: int, fps: float, packing: int = 1) -> list[list[int]]:
    """temporal_ids for `count` frames given as images, taken `fps` per second."""
    ids = [int(i / fps / TIME_SCALE) for i in range(count)]
    return [ids[i : i + packing] for i in range(0, count, packing)]


def _decode(path: str | os.PathLike, choose) -> list[Image.Image]:
    """The frames `choose(total, rate)` picks, as RGB images; ImageError if the file cannot be read."""
    try:
        import av
    except ImportError:
        raise ImageError(f"{path}: reading videos needs PyAV: pip install 'minicpmv[video]'") from None
    if not os.path.isfile(path):
        raise ImageError(f"{path}: no such video file")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            total = stream.frames or sum(1 for _ in container.decode(stream))
        wanted = set(choose(total, rate))
        with av.open(str(path)) as container:  # only the chosen frames are kept: long videos fit
            frames = [
                frame.to_image().convert("RGB")
                for index, frame in enumerate(container.decode(video=0))
                if index in wanted
            ]
    except (av.error.FFmpegError, IndexError, ValueError) as exc:
        raise ImageError(f"{path}: cannot decode video ({exc})") from None
    if not frames:
        raise ImageError(f"{path}: the video has no frames")
    return frames


def load_video_frames(
    path: str | os.PathLike, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES
) -> list[Image.Image]:
    """The 2.6 recipe's frames of a video file."""
    return _decode(path, lambda total, rate: frame_indices(total, rate, fps, max_frames))


def load_packed_video(
    path: str | os.PathLike,
    fps: float = PACKED_FPS,
    max_frames: int = PACKED_MAX_FRAMES,
    max_packing: int = PACKED_MAX_PACKING,
) -> tuple[list[Image.Image], list[list[int]]]:
    """The 4.5 recipe's frames of a video file and their temporal_ids groups."""
    plan = {}

    def choose(total, rate):
        plan["indices"], plan["groups"] = packed_plan(total, rate, fps, max_frames, max_packing)
        return plan["indices"]

    frames = _decode(path, choose)
    if len(frames) != len(plan["indices"]):  # a container that reports more frames than it has
        kept = [t for group in plan["groups"] for t in group][: len(frames)]
        packing = len(plan["groups"][0])
        return frames, [kept[i : i + packing] for i in range(0, len(kept), packing)]
    return frames, plan["groups"]
