"""MiniCPM-V: three named parts (`vpm`, `resampler`, `llm`) and one seam, `get_image_features`.

Image features replace the `<unk>` rows of the token embeddings at `image_bound`; the model never
sees text, tokenizers or sampling settings. In 4.6/4.7 the `resampler` slot holds the patch
merger (a crop gives rows*cols/16 tokens, or /4 in 4x mode, instead of query_num).
"""

from __future__ import annotations

import torch
from torch import nn

from ..versions import facts
from .config import MiniCPMVConfig
from .llm import KVCache, LanguageModel
from .merger import PatchMerger
from .resampler import Resampler
from .vision import NavitSiglip, TimmSiglip


def strip_to_image(strip: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of the processor's patch layout: (3, P, P*rows*cols) -> (3, rows*P, cols*P)."""
    channels, patch, _ = strip.shape
    grid = strip.reshape(channels, patch, rows, cols, patch)  # (3, P, rows, cols, P)
    return grid.permute(0, 2, 1, 3, 4).reshape(channels, rows * patch, cols * patch)


def pad_strips(crops: list[torch.Tensor]) -> torch.Tensor:
    """Zero-pad patch strips on the right to the longest: (N, 3, P, P*Lmax)."""
    width = max(crop.shape[-1] for crop in crops)
    batch = crops[0].new_zeros((len(crops), *crops[0].shape[:2], width))
    for i, crop in enumerate(crops):
        batch[i, ..., : crop.shape[-1]] = crop
    return batch


class MiniCPMV(nn.Module):
    def __init__(self, config: MiniCPMVConfig):
        super().__init__()
        self.config = config
        vision = config.vision
        self.vpm = NavitSiglip(vision) if vision.kind == "navit" else TimmSiglip(vision)
        if facts(config.version).downsample:
            self.resampler = PatchMerger(vision.hidden_size, config.llm.hidden_size, config.merge_layers)
        else:
            self.resampler = Resampler(
                config.query_num,
                config.llm.hidden_size,
                config.resampler_heads,
                vision.hidden_size,
                query_pos_embed=facts(config.version).query_pos_embed,
                key_positions=facts(config.version).key_positions,
            )
        self.llm = LanguageModel(config.llm)
        if config.llm.tie_word_embeddings:
            self.llm.lm_head.weight = self.llm.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.model.embed_tokens.weight.dtype

    @property
    def vision_weight(self) -> torch.Tensor:
        """A weight of the vision side: its device and dtype (in low-memory mode the LLM may not
        be loaded)."""
        return next(self.resampler.parameters())

    @property
    def device(self) -> torch.device:
        return self.llm.model.embed_tokens.weight.device

    def get_image_features(
        self,
        pixel_values: list[torch.Tensor],
        tgt_sizes: torch.Tensor,
        crops_per_call: int | None = None,
        time_groups: list[list[int]] | None = None,
        progress=None,
        downsample_mode: str | None = None,
    ) -> torch.Tensor:
        """Crops (each (3, P, P*L), the processor's layout) and their (rows, cols) -> (N, Q, D).

        crops_per_call: crops through the vision tower at once (default config.vision_batch_size);
        fewer means smaller attention matrices, i.e. less peak memory, for the same result.
        time_groups (4.5): the time ids of consecutive groups of crops (-1: a still crop); the
        result then has one row per group, (G, Q, D).
        progress: called with (crops done, crops in all) after each call of the vision tower.
        4.6/4.7: the tokens of all crops in order, (sum of crop_tokens, D), merged as
        `downsample_mode` says (default the config's).
        """
        progress = progress or (lambda done, total: None)
        if isinstance(self.resampler, PatchMerger):
            return self._merged_features(pixel_values, tgt_sizes, crops_per_call, progress, downsample_mode)
        weight = self.vision_weight
        if not pixel_values:
            return torch.zeros(
                (0, self.config.query_num, self.config.llm.hidden_size), dtype=weight.dtype, device=weight.device
            )
        tgt_sizes = tgt_sizes.to(torch.int64).cpu()
        crops = [crop.to(device=weight.device, dtype=weight.dtype) for crop in pixel_values]
        if time_groups is not None and any(len(group) > 1 for group in time_groups):
            return self._grouped_features(crops, tgt_sizes, crops_per_call, time_groups, progress)
        if isinstance(self.vpm, TimmSiglip):  # 2.0 / 1.0: each crop alone, as an image
            features = []
            for done, (crop, (rows, cols)) in enumerate(zip(crops, tgt_sizes.tolist()), 1):
                image = strip_to_image(crop, rows, cols)[None]  # (1, 3, H, W)
                features.append(self.resampler(self.vpm(image), torch.tensor([[rows, cols]])))
                progress(done, len(crops))
            return torch.cat(features)
        # Pad to the longest crop of the whole batch before chunking, as the official code does,
        # so chunking never changes the result (2.5's unmasked positions depend on Lmax).
        batch = pad_strips(crops)
        chunk = crops_per_call or self.config.vision_batch_size
        patch = self.config.vision.patch_size
        features = []
        for i in range(0, len(crops), chunk):
            sizes = tgt_sizes[i : i + chunk]
            # Masked padding changes nothing, so a chunk can drop columns no crop of it uses (a
            # lone crop then needs no mask: a faster, leaner attention). 2.5 must keep them: its
            # unmasked positions depend on the padded length. The resampler masks padded keys.
            width = (
                batch.shape[-1] // patch
                if self.config.vision.faithful_idefics2_mask
                else int((sizes[:, 0] * sizes[:, 1]).max())
            )
            # contiguous crops and their own sizes tensor: every call has the same memory layout,
            # so a compiled tower (minicpmv.compilation) needs no second graph
            crops_chunk = batch[i : i + chunk, ..., : width * patch].contiguous()
            hidden = self.vpm(crops_chunk, sizes.clone())  # (n, width, Dv)
            times = time_groups[i : i + chunk] if time_groups is not None else None
            features.append(self.resampler(hidden, sizes, times))  # (n, Q, D)
            progress(min(i + chunk, len(crops)), len(crops))
        return torch.cat(features)

    def crop_tokens(self, tgt_sizes: torch.Tensor, downsample_mode: str | None = None) -> list[int]:
        """Image tokens per crop of (rows, cols) patches (4.6/4.7: merged as the mode says)."""
        mode = downsample_mode or self.config.downsample_mode
        sizes = tgt_sizes.reshape(-1, 2).tolist()
        return [facts(self.config.version).crop_tokens(size, mode, self.config.query_num) for size in sizes]

    def _merged_features(self, pixel_values, tgt_sizes, crops_per_call, progress, mode=None) -> torch.Tensor:
        """4.6/4.7: tower (with the window merger in 16x mode), then the patch merger, per chunk."""
        weight = self.vision_weight
        if not pixel_values:
            return weight.new_zeros((0, self.config.llm.hidden_size))
        tgt_sizes = tgt_sizes.to(torch.int64).cpu().reshape(-1, 2)
        # 16x: the window merger's 2x2 and the merger's 2x2; 4x: the merger's only
        window = facts(self.config.version).merge_per_side(mode or self.config.downsample_mode) > 2
        chunk = crops_per_call or self.config.vision_batch_size
        features = []
        for i in range(0, len(pixel_values), chunk):
            sizes = tgt_sizes[i : i + chunk]
            crops = pad_strips(
                [crop.to(device=weight.device, dtype=weight.dtype) for crop in pixel_values[i : i + chunk]]
            )
            hidden = self.vpm(crops, sizes.clone(), merge=window)  # (n, L, Dv)
            features.append(self.resampler(hidden, sizes // self.config.vision.window if window else sizes))
            progress(min(i + chunk, len(pixel_values)), len(pixel_values))
        return torch.cat(features)

    def _grouped_features(self, crops, tgt_sizes, crops_per_call, time_groups, progress) -> torch.Tensor:
        """4.5 video groups: every crop through the tower, then one resampler call over groups."""
        chunk = crops_per_call or self.config.vision_batch_size
        hidden = []
        for i in range(0, len(crops), chunk):
            sizes = tgt_sizes[i : i + chunk]
            hidden.extend(self.vpm(pad_strips(crops[i : i + chunk]), sizes.clone()).unbind(0))  # (width, Dv) each
            progress(min(i + chunk, len(crops)), len(crops))
        width = max(h.shape[0] for h in hidden)
        batch = hidden[0].new_zeros((len(hidden), width, hidden[0].shape[-1]))  # (N, Lmax, Dv)
        for i, h in enumerate(hidden):
            batch[i, : h.shape[0]] = h
        return self.resampler(batch, tgt_sizes, time_groups)  # (G, Q, D)

    def embed_inputs(
        self, input_ids: torch.Tensor, image_features: list[torch.Tensor], image_bound: list[torch.Tensor]
    ) -> torch.Tensor:
        """Token embeddings (B, T, D) with each sample's image features written over its spans."""
        embeds = self.llm.embed(input_ids.to(self.device))
        for row, (features, bounds) in enumerate(zip(image_features, image_bound)):
            if len(bounds) == 0:
                continue
            positions = torch.cat([torch.arange(start, end) for start, end in bounds.tolist()]).to(self.device)
            embeds[row, positions] = features.reshape(-1, features.shape[-1]).to(embeds.dtype)
        return embeds

    def features_per_sample(
        self,
        pixel_values: list[list[torch.Tensor]],
        tgt_sizes: list[torch.Tensor],
        time_units: list | None = None,
        downsample_mode: str | None = None,
    ) -> list[torch.Tensor]:
        """Encode all crops of a batch at once, then split them back per sample (4.5: per
        sample's temporal groups, `time_units` as the processor gives them)."""
        flat = [crop for sample in pixel_values for crop in sample]
        sizes = torch.cat([t.reshape(-1, 2) for t in tgt_sizes]) if flat else torch.zeros((0, 2), dtype=torch.int32)
        groups = [[g for unit in units for g in unit] for units in time_units or []]
        if not any(groups):  # versions without temporal groups give none
            features = self.get_image_features(flat, sizes, downsample_mode=downsample_mode)
            if isinstance(self.resampler, PatchMerger):  # (tokens, D): split by each sample's tokens
                counts = [sum(self.crop_tokens(t, downsample_mode)) for t in tgt_sizes]
                return list(features.split(counts))
            return list(features.split([len(sample) for sample in pixel_values]))
        features = self.get_image_features(flat, sizes, time_groups=[g for sample in groups for g in sample])
        return list(features.split([len(sample) for sample in groups]))

    def forward(
        self,
        input_ids,
        pixel_values,
        tgt_sizes,
        image_bound,
        attention_mask=None,
        position_ids=None,
        cache: KVCache | None = None,
        last_only: bool = False,
        image_features: list[torch.Tensor] | None = None,
        time_units: list | None = None,
    ) -> torch.Tensor:
        """Full multimodal forward: logits (B, T, V). `image_features`, per row (crops, Q, D) as
        get_image_features gives them, stand in for the crops when the caller already has them."""
        if image_features is None:
            image_features = self.features_per_sample(pixel_values, tgt_sizes, time_units)
        features = image_features
        embeds = self.embed_inputs(input_ids, features, image_bound)
        return self.llm(embeds, position_ids, attention_mask, cache, last_only)
