"""Two of ChatModel's parts: which half of the model is in memory (the paper's sequential
loading), and image encoding with its feature cache. ChatModel (chat.py) is the conversation
front that uses them."""

from __future__ import annotations

import hashlib
import sys
import time
from collections import OrderedDict

import torch

from .model.checkpoint import VISION_PARTS, OpenCheckpoint
from .processing import ModelInputs

PROGRESS_AFTER = 2.0  # seconds of encoding before a progress line appears


class Residency:
    """Low-memory mode: the checkpoint reads the vision parts or the LLM in, one half at a time,
    releasing the other first. Without a checkpoint (everything loaded) it does nothing."""

    def __init__(self, checkpoint: OpenCheckpoint | None = None):
        self.checkpoint = checkpoint
        self.resident: tuple | None = None
        self.swap_seconds = 0.0  # time spent reading parts in, reported as load time

    @property
    def low_memory(self) -> bool:
        return self.checkpoint is not None

    def need(self, parts: tuple) -> None:
        """Make `parts` resident (the other half released first)."""
        if self.checkpoint is None or self.resident == parts:
            return
        start = time.perf_counter()
        if self.resident is not None:
            self.checkpoint.release(self.resident)
        self.checkpoint.materialize(parts)
        self.resident = parts
        self.swap_seconds += time.perf_counter() - start


class ImageEncoder:
    """Crops -> resampler features in the vision precision with the tuned threads and batching;
    an image seen before (same pixels and sizes) reuses its features from a small LRU cache."""

    def __init__(
        self,
        model,
        residency: Residency,
        vision_autocast: torch.dtype | None,
        tuning: dict | None,
        cache_size: int = 16,
    ):
        self.model, self.residency = model, residency
        self.vision_autocast = vision_autocast  # see devices.pick_vision_autocast
        self.tuning = tuning
        self.default_crops_per_call: int | None = None  # untuned: the config's vision_batch_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self.show_progress = sys.stderr.isatty()  # a terminal: the CLI; servers and tests stay quiet

    @property
    def cache_size(self) -> int:
        return self._cache_size

    @cache_size.setter
    def cache_size(self, size: int) -> None:
        self._cache_size = size
        while len(self._cache) > size:
            self._cache.popitem(last=False)

    def features(self, inputs: ModelInputs) -> list[torch.Tensor]:
        """Per-sample features (n_spans, query_num, hidden) of a processed batch (4.6/4.7:
        (tokens, hidden), the crops' tokens in order)."""
        config = self.model.config
        per_sample = []
        for b, (crops, plans, sizes) in enumerate(zip(inputs.pixel_values, inputs.plans, inputs.tgt_sizes)):
            units = inputs.time_units[b] if inputs.time_units else []
            if units:  # 4.5: an image, or a group of video frames, with the time ids of its outputs
                counts = [sum(len(group) for group in unit) for unit in units]
            elif config.vision.faithful_idefics2_mask:
                # 2.5's vision output depends on the longest crop of the call (official quirk), so
                # its unit of encoding is the whole sample; elsewhere each image is independent.
                counts, units = [sum(p.num_crops for p in plans)], [None]
            else:
                counts, units = [p.num_crops for p in plans], [None] * len(plans)
            features, offset = [], 0
            for count, unit in zip(counts, units):
                part = (crops[offset : offset + count], sizes[offset : offset + count], unit, inputs.downsample_mode)
                features.append(self._cached(*part))
                offset += count
            # (0, Q, D) for a resampler's per-crop rows; (0, D) for 4.6/4.7's flat tokens
            shape = (0, config.query_num, config.llm.hidden_size) if config.query_num else (0, config.llm.hidden_size)
            empty = torch.zeros(shape)
            per_sample.append(torch.cat(features) if features else empty)
        return per_sample

    def _cached(self, crops: list[torch.Tensor], sizes: torch.Tensor, time_groups=None, mode=None) -> torch.Tensor:
        digest = hashlib.sha1(sizes.numpy().tobytes())
        digest.update(repr((time_groups, mode or self.model.config.downsample_mode)).encode())
        for crop in crops:
            digest.update(crop.numpy().tobytes())
        key = digest.hexdigest()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        self.residency.need(VISION_PARTS)
        features = self.encode(crops, sizes, time_groups, mode)
        self._cache[key] = features
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return features

    def _progress(self):
        """A progress line on stderr for encodings that take more than PROGRESS_AFTER seconds (a
        real-size tower on a CPU without bf16 can take minutes): crops done, total, time left."""
        if not self.show_progress:
            return None
        start, shown = time.perf_counter(), [False]

        def report(done: int, total: int) -> None:
            spent = time.perf_counter() - start
            if done < total and spent > PROGRESS_AFTER:
                left = spent / done * (total - done)
                print(
                    f"\rencoding images: {done}/{total} crops, about {left:.0f} s left ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
                shown[0] = True
            elif done == total and shown[0]:
                print(
                    f"\rencoding images: {total}/{total} crops in {spent:.1f} s          ", file=sys.stderr, flush=True
                )

        return report

    def encode(self, crops: list[torch.Tensor], sizes: torch.Tensor, time_groups=None, mode=None) -> torch.Tensor:
        """Crops -> features with the tuned threads and crop batching, in the vision precision."""
        # low-memory mode also keeps activations small: one crop through the vision tower at a time
        encode = (self.tuning or {}).get("encode", {})
        per_call = 1 if self.residency.low_memory else encode.get("crops_per_call", self.default_crops_per_call)
        original = torch.get_num_threads()
        device = self.model.vision_weight.device.type
        try:
            torch.set_num_threads(encode.get("threads", original))
            with torch.autocast(
                device, dtype=self.vision_autocast or torch.bfloat16, enabled=self.vision_autocast is not None
            ):
                progress = self._progress()
                features = self.model.get_image_features(crops, sizes, per_call, time_groups, progress, mode)
            return features.to(self.model.vision_weight.dtype)
        finally:
            torch.set_num_threads(original)
