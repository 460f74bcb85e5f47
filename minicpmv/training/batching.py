"""Samples -> model batches: right-padded, or packed (several samples in one fixed-length row,
positions restarting per sample, block-diagonal causal attention), plus length-grouped order.

Packing here never cuts a sample: samples are placed whole, in order, into rows of `length`
tokens (first fit), so no image span is ever split and no label is lost; the rest of a row is
padding. No target crosses a boundary because each sample's last target is its own (pre-shifted
targets never point into the next sample).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .data import IGNORE, TrainSample

PAD_ID = 0


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    targets: torch.Tensor  # (B, T), pre-shifted, IGNORE where not supervised
    position_ids: torch.Tensor  # (B, T), or (3, B, T) with 4.7's canvas positions
    attention_mask: torch.Tensor  # (B, T) real tokens, or (B, 1, T, T) bool when packed
    pixel_values: list  # per row: crops
    tgt_sizes: list  # per row: (crops, 2)
    image_bound: list  # per row: (spans, 2)
    samples: int = 0
    real_tokens: int = 0  # tokens of samples, not padding
    image_features: list | None = None  # per row: (crops, Q, D), when the samples carry them instead of pixels

    @property
    def supervised_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())


def _images(samples: list[TrainSample], offsets: list[int]):
    crops = [crop for s in samples for image in s.images for crop in image.crops]
    sizes = [image.tgt_sizes for s in samples for image in s.images]
    bounds = [[start + offset, end + offset] for s, offset in zip(samples, offsets) for start, end in s.image_bound]
    features = [s.image_features for s in samples if s.image_features is not None]
    return (
        crops,
        torch.cat(sizes) if sizes else torch.zeros((0, 2), dtype=torch.int32),
        torch.tensor(bounds, dtype=torch.long).reshape(-1, 2),
        torch.cat(features) if features else None,
    )


def _cached_features(features: list) -> list | None:
    """The rows' features when the samples carry them (a row without images: None), else None."""
    return features if any(f is not None for f in features) else None


def padded_batch(samples: list[TrainSample]) -> Batch:
    """One sample per row, right-padded to the longest."""
    length = max(len(s) for s in samples)
    ids = torch.full((len(samples), length), PAD_ID, dtype=torch.long)
    targets = torch.full((len(samples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    pixel_values, tgt_sizes, bounds, features = [], [], [], []
    for row, sample in enumerate(samples):
        ids[row, : len(sample)] = torch.tensor(sample.input_ids)
        targets[row, : len(sample)] = torch.tensor(sample.targets)
        mask[row, : len(sample)] = 1
        crops, sizes, spans, cached = _images([sample], [0])
        pixel_values.append(crops)
        tgt_sizes.append(sizes)
        bounds.append(spans)
        features.append(cached)
    positions = torch.arange(length).expand(len(samples), length).clone()
    if any(s.position_ids is not None for s in samples):  # 4.7: the samples' own (3, T) positions
        positions = positions[None].repeat(3, 1, 1)
        for row, sample in enumerate(samples):
            positions[:, row, : len(sample)] = sample.position_ids
    return Batch(
        ids,
        targets,
        positions,
        mask,
        pixel_values,
        tgt_sizes,
        bounds,
        len(samples),
        sum(len(s) for s in samples),
        _cached_features(features),
    )


def pack(samples: list[TrainSample], length: int) -> list[list[TrainSample]]:
    """First-fit, in order: each sample goes into the first row with room for it."""
    rows: list[list[TrainSample]] = []
    free: list[int] = []
    for sample in samples:
        if len(sample) > length:
            raise ValueError(f"a sample of {len(sample)} tokens does not fit a packed row of {length}")
        row = next((i for i, room in enumerate(free) if room >= len(sample)), None)
        if row is None:
            rows.append([])
            free.append(length)
            row = len(rows) - 1
        rows[row].append(sample)
        free[row] -= len(sample)
    return rows


def packed_batch(rows: list[list[TrainSample]], length: int) -> Batch:
    """Rows of packed samples -> a batch of `length` tokens per row with a block-diagonal mask."""
    count = len(rows)
    ids = torch.full((count, length), PAD_ID, dtype=torch.long)
    targets = torch.full((count, length), IGNORE, dtype=torch.long)
    positions = torch.zeros((count, length), dtype=torch.long)
    segments = torch.zeros((count, length), dtype=torch.long)  # 0 = padding, k = k-th sample
    pixel_values, tgt_sizes, bounds, features = [], [], [], []
    for r, row in enumerate(rows):
        offsets, at = [], 0
        for k, sample in enumerate(row, 1):
            end = at + len(sample)
            ids[r, at:end] = torch.tensor(sample.input_ids)
            targets[r, at:end] = torch.tensor(sample.targets)
            positions[r, at:end] = torch.arange(len(sample))
            segments[r, at:end] = k
            offsets.append(at)
            at = end
        crops, sizes, spans, cached = _images(row, offsets)
        pixel_values.append(crops)
        tgt_sizes.append(sizes)
        bounds.append(spans)
        features.append(cached)
    causal = torch.ones((length, length), dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    # padding attends to itself only, so that no row of the softmax is empty
    allowed = (same & causal & (segments[:, :, None] > 0)) | torch.eye(length, dtype=torch.bool)
    return Batch(
        ids,
        targets,
        positions,
        allowed[:, None],
        pixel_values,
        tgt_sizes,
        bounds,
        sum(len(row) for row in rows),
        sum(len(s) for row in rows for s in row),
        _cached_features(features),
    )


def length_grouped_order(lengths: list[int], group: int, seed: int) -> list[int]:
    """Indices shuffled, then sorted by length within megabatches of `group` samples, and the
    megabatches shuffled: batches of similar lengths (less padding) in a seeded random order.
    Image samples and text-only samples are grouped apart (LLaVA's modality grouping): a text
    sample's length is given negative."""
    generator = random.Random(seed)
    by_kind = {True: [i for i, n in enumerate(lengths) if n >= 0], False: [i for i, n in enumerate(lengths) if n < 0]}
    megabatches = []
    for indices in by_kind.values():
        generator.shuffle(indices)
        for start in range(0, len(indices), group):
            megabatches.append(sorted(indices[start : start + group], key=lambda i: -abs(lengths[i])))
    generator.shuffle(megabatches)
    return [i for megabatch in megabatches for i in megabatch]
