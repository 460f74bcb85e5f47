"""Video input as frames, the MiniCPM-V 2.6 recipe: sample about `fps` frames per second, at most
`max_frames` spread evenly; each frame is then an image of the prompt (no `<image_id>`, few
slices). Decoding uses PyAV, behind the `video` extra."""

from __future__ import annotations

import os

from PIL import Image

from ..errors import ImageError

DEFAULT_FPS = 1.0
DEFAULT_MAX_FRAMES = 64
VIDEO_MAX_SLICE_NUMS = 2  # the official 2.6 video example: 2 slices per frame (1 if memory is short)


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


def load_video_frames(
    path: str | os.PathLike, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES
) -> list[Image.Image]:
    """Decode the sampled frames of a video file as RGB images; ImageError if it cannot be read.

    Only the chosen frames are kept, so long videos do not fill memory.
    """
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
        wanted = set(frame_indices(total, rate, fps, max_frames))
        with av.open(str(path)) as container:
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
