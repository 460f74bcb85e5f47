"""Pixels for a slice plan: bicubic resizes, normalisation and the patch-strip layout the vision
encoder consumes. Matches the official float32 output exactly (tests/fixtures pixels, crops).

Two resize backends, as the official processors use them ("pixel_backend" in versions.py):
- "pil" (1.0-4.5): PIL bicubic, then (k/255 - mean) / std;
- "torch" (4.6/4.7, transformers' torchvision backend): antialiased bicubic on the uint8 tensor
  (torch's own kernel, which torchvision calls for uint8 images), then (k - 255 mean) / (255 std)
  in one step. The two resizes differ by at most one level on some pixels (the fixtures' README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
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


def crop_images(image: Image.Image, plan: SlicePlan, backend: str = "pil") -> list[np.ndarray]:
    """The overview then the slices (row-major), each resized from the original with bicubic
    interpolation: uint8 (H, W, 3) arrays."""
    resize = _resize_pil if backend == "pil" else _resize_torch
    crops = [resize(image, plan.source_size)]
    if plan.grid is not None:
        refined = resize(image, plan.refine_size)
        crops.extend(refined[top:bottom, left:right] for left, top, right, bottom in plan.slice_boxes())
    return crops


def _resize_pil(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(image.resize(size, resample=Image.Resampling.BICUBIC), dtype=np.uint8)


def _resize_torch(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    width, height = size
    resized = F.interpolate(pixels, size=(height, width), mode="bicubic", antialias=True)
    return resized[0].permute(1, 2, 0).numpy()  # (H, W, 3)


def normalize(crop: np.ndarray, mean=NORM_MEAN, std=NORM_STD, backend: str = "pil") -> np.ndarray:
    """uint8 HWC RGB -> float32 CHW, computed in float32 like the official processor: (x/255 -
    mean) / std ("pil"), or (x - 255 mean) / (255 std) in one step ("torch")."""
    pixels = crop.astype(np.float32)
    mean, std = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    if backend == "pil":
        pixels = (pixels / 255 - mean) / std
    else:
        pixels = (pixels - (mean * 255).astype(np.float32)) / (std * 255).astype(np.float32)
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


def encode_image(
    image: Image.Image, plan: SlicePlan, mean=NORM_MEAN, std=NORM_STD, backend: str = "pil"
) -> EncodedImage:
    """Resize, cut, normalise and patchify an RGB image according to `plan`."""
    crops = [
        torch.from_numpy(patchify(normalize(crop, mean, std, backend), plan.patch_size))
        for crop in crop_images(image, plan, backend)
    ]
    tgt_sizes = torch.tensor(plan.tgt_sizes, dtype=torch.int32).reshape(-1, 2)
    return EncodedImage(plan, crops, tgt_sizes)
