"""Pixels for a slice plan: PIL bicubic resizes, normalisation and the patch-strip layout the
vision encoder consumes. Matches the official float32 output exactly (tests/fixtures pixels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .slicing import SlicePlan

NORM_MEAN = (0.5, 0.5, 0.5)
NORM_STD = (0.5, 0.5, 0.5)


@dataclass
class EncodedImage:
    """One image ready for the vision encoder.

    crops: per crop a float32 tensor (3, patch, patch * L), L = rows * cols patches.
    tgt_sizes: int32 tensor (num_crops, 2) of (rows, cols) patches per crop.
    """

    plan: SlicePlan
    crops: list[torch.Tensor]
    tgt_sizes: torch.Tensor


def crop_images(image: Image.Image, plan: SlicePlan) -> list[Image.Image]:
    """The overview then the slices (row-major), each resized from the original with BICUBIC."""
    crops = [image.resize(plan.source_size, resample=Image.Resampling.BICUBIC)]
    if plan.grid is not None:
        refined = image.resize(plan.refine_size, resample=Image.Resampling.BICUBIC)
        crops.extend(refined.crop(box) for box in plan.slice_boxes())
    return crops


def normalize(crop: Image.Image, mean=NORM_MEAN, std=NORM_STD) -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW, (x/255 - mean) / std computed in float32 like the official."""
    pixels = np.asarray(crop, dtype=np.uint8).astype(np.float32) / 255
    pixels = (pixels - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return pixels.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def patchify(chw: np.ndarray, patch_size: int) -> np.ndarray:
    """(3, H, W) -> (3, P, P*L): the P×P patches in row-major order, laid side by side.

    Patch l = r * (W/P) + c occupies columns [P*l, P*l + P).
    """
    channels, height, width = chw.shape
    rows, cols = height // patch_size, width // patch_size
    strips = chw.reshape(channels, rows, patch_size, cols, patch_size)  # (3, rows, P, cols, P)
    strips = strips.transpose(0, 2, 1, 3, 4)  # (3, P, rows, cols, P)
    return np.ascontiguousarray(strips.reshape(channels, patch_size, rows * cols * patch_size))


def encode_image(image: Image.Image, plan: SlicePlan, mean=NORM_MEAN, std=NORM_STD) -> EncodedImage:
    """Resize, cut, normalise and patchify an RGB image according to `plan`."""
    crops = [
        torch.from_numpy(patchify(normalize(crop, mean, std), plan.patch_size)) for crop in crop_images(image, plan)
    ]
    tgt_sizes = torch.tensor(plan.tgt_sizes, dtype=torch.int32).reshape(-1, 2)
    return EncodedImage(plan, crops, tgt_sizes)
