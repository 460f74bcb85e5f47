"""Image features kept across steps when the vision encoder and resampler are frozen (recipe
setting `cache_image_features`): each image is read, sliced and encoded once, and every later
visit of its samples reuses the result, so an LLM-only or LoRA stage pays for vision once per
image instead of once per step. On the demo's document stage the vision parts and the image
decoding took half of a step (research/demo-model-log.md).

Samples are kept whole, without their pixels; features are shared between the records of one
image (a page asked about four times is encoded once). Memory grows with the data: per image
crops x queries x hidden values (a 9-slice page with its overview: 0.66 MB for the demo model,
9.2 MB for MiniCPM-V 2.6, in float32), so this is for data that fits in memory, and off by
default.
"""

from __future__ import annotations

import dataclasses
import json

import torch

from ..processing.pixels import EncodedImage
from .data import TrainSample


class FeatureCache:
    """`dataset[index]` with the images' pixels replaced by the frozen vision parts' output."""

    def __init__(self, model, dataset, autocast: torch.dtype | None = None):
        self.model, self.dataset, self.autocast = model, dataset, autocast
        self.samples: dict[int, TrainSample | None] = {}
        self.features: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> TrainSample | None:
        if index not in self.samples:
            self.samples[index] = self._encoded(index, self.dataset[index])
        return self.samples[index]

    def _encoded(self, index: int, sample: TrainSample | None) -> TrainSample | None:
        if sample is None or not sample.images:
            return sample
        key = self._image_key(index)
        if key not in self.features:
            self.features[key] = self._encode(sample.images)
        pixel_free = [EncodedImage(image.plan, [], image.tgt_sizes) for image in sample.images]
        return dataclasses.replace(sample, images=pixel_free, image_features=self.features[key])

    def _image_key(self, index: int) -> str:
        """Records naming the same image(s) share features; one without a name keeps its own."""
        record = self.dataset.records[index]
        image = record.get("image") if isinstance(record, dict) else None
        return json.dumps(image, sort_keys=True) if image else f"#{index}"

    @torch.no_grad()
    def _encode(self, images: list[EncodedImage]) -> torch.Tensor:
        crops = [crop for image in images for crop in image.crops]
        sizes = torch.cat([image.tgt_sizes for image in images])
        device = self.model.device
        with torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None):
            features = self.model.get_image_features(crops, sizes)  # (crops, Q, D)
        return features.detach()
