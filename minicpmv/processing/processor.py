"""The single entry point from chat messages to model inputs, used by chat, server, training and
evaluation alike: messages -> prompt -> placeholders -> token ids, image crops, tgt_sizes and
image bounds, batched with left padding as the official 2.6 processor does."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..errors import PromptError, PromptTooLongError
from ..versions import facts
from .canvas import ImageLayout, canvas_positions
from .chat_format import message_images, normalize_messages, render_prompt
from .config import ProcessorConfig
from .image_io import DEFAULT_MAX_PIXELS, load_image
from .pixels import EncodedImage, encode_image
from .placeholders import expand_image_tags, find_image_bounds, image_placeholder, refuse_marker_text
from .slicing import SlicePlan
from .temporal import check_temporal_ids, group_crops, skipped_frames, still_units
from .tokenizer import TextTokenizer, load_tokenizer

PAD_TOKEN_ID = 0  # the official processor and generate() pad with id 0


@dataclass
class ModelInputs:
    """A batch of B prompts for the model.

    input_ids, attention_mask: int64 (B, T), left-padded with id 0 / mask 0.
    pixel_values[b]: the crops of sample b, each float32 (3, patch, patch * L).
    tgt_sizes[b]: int32 (n_crops_b, 2), (rows, cols) of patches per crop.
    image_bound[b]: int64 (n_spans_b, 2), [start, end) of each feature span (a crop's, or with
        4.5 a temporal group's).
    prompts[b]: the prompt text after the chat template, before placeholder expansion.
    time_units[b]: 4.5 only (else empty): the crops in encoding units (an image, or a group of
        video frames), each unit a list of output groups, each group the time ids of its crops.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: list[list[torch.Tensor]]
    tgt_sizes: list[torch.Tensor]
    image_bound: list[torch.Tensor]
    prompts: list[str] = field(default_factory=list)
    plans: list[list[SlicePlan]] = field(default_factory=list)
    time_units: list[list[list[list[int]]]] = field(default_factory=list)
    # 4.7: canvas M-RoPE positions (3, B, T) (rows T, H, W; left padding holds 1); None: 1-D
    position_ids: torch.Tensor | None = None
    downsample_mode: str | None = None  # 4.6/4.7: the token merging the placeholders were sized for

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class EncodedPrompt:
    """One sample before batching."""

    prompt: str
    input_ids: list[int]
    images: list[EncodedImage]
    image_bound: list[tuple[int, int]]
    crops: list = field(default_factory=list)  # in the order the model encodes them
    tgt_sizes: list = field(default_factory=list)  # (rows, cols) per crop, same order
    time_units: list = field(default_factory=list)  # see ModelInputs
    position_ids: torch.Tensor | None = None  # 4.7: (3, T) canvas positions


class MiniCPMVProcessor:
    """Turns chat messages with images into `ModelInputs` for one checkpoint's format."""

    def __init__(self, config: ProcessorConfig, tokenizer: TextTokenizer, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.config = config
        self.tokenizer = tokenizer
        self.max_pixels = max_pixels
        start_tokens, end_tokens = [config.im_start], [config.im_end]
        if facts(config.version).placeholder_schema == "ids":  # slices are spans of their own (else nested)
            start_tokens.append(config.slice_start)
            end_tokens.append(config.slice_end)
        self.start_ids = {tokenizer.require_id(t) for t in start_tokens}
        self.end_ids = {tokenizer.require_id(t) for t in end_tokens}

    def with_downsample_mode(self, mode: str | None) -> MiniCPMVProcessor:
        """This processor with another downsample mode (4.6/4.7); a ConfigError for a version
        without modes or an unknown mode. The tokenizer is shared."""
        if mode is None or mode == self.config.downsample_mode:
            return self
        other = copy.copy(self)
        other.config = replace(self.config, downsample_mode=mode)
        return other

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> MiniCPMVProcessor:
        """Processor of a checkpoint folder (config.json, preprocessor_config.json, tokenizer files)."""
        return cls(ProcessorConfig.from_pretrained(path), load_tokenizer(path), **kwargs)

    def plan(self, size: tuple[int, int], max_slice_nums: int | None = None) -> SlicePlan:
        """Slice plan of an image of `size` (width, height) under this checkpoint's settings."""
        return self.config.plan(size, max_slice_nums)

    def placeholder(self, plan: SlicePlan, image_index: int = 0, use_image_id: bool | None = None) -> str:
        return image_placeholder(plan, self.config, image_index, use_image_id)

    def build_prompt(
        self,
        messages: list,
        system_prompt: str | None = None,
        add_generation_prompt: bool = True,
        thinking: bool | None = None,
    ):
        """(prompt text with image tags, image sources in tag order)."""
        normalized = normalize_messages(messages, system_prompt)
        self.check_text(normalized)
        prompt = render_prompt(
            normalized,
            self.config.version,
            self.tokenizer.chat_template,
            self.tokenizer.special_tokens,
            add_generation_prompt,
            thinking,
        )
        return prompt, message_images(normalized)

    def check_text(self, normalized: list) -> None:
        """PromptError if a message's text holds an image-marker string (normalized messages)."""
        refuse_marker_text(
            ((i, part) for i, m in enumerate(normalized) for part in m.parts if isinstance(part, str)), self.config
        )

    def encode_images(self, sources: list, max_slice_nums: int | None = None) -> list[EncodedImage]:
        """Load, plan and encode images; raises ImageError naming the bad one."""
        encoded = []
        for source in sources:
            image = load_image(source, self.max_pixels)
            plan = self.plan(image.size, max_slice_nums)
            backend = facts(self.config.version).pixel_backend
            encoded.append(encode_image(image, plan, self.config.norm_mean, self.config.norm_std, backend))
        return encoded

    def encode_prompt(
        self,
        prompt: str,
        images: list[EncodedImage],
        use_image_id: bool | None = None,
        max_length: int | None = None,
        temporal_ids: list | None = None,
    ) -> EncodedPrompt:
        """Expand image tags in a rendered prompt, tokenise it and locate the image spans.

        temporal_ids (4.5): the images are video frames in these groups of time ids.
        """
        groups = None
        if temporal_ids is not None:
            if not facts(self.config.version).temporal:
                raise PromptError(f"MiniCPM-V {self.config.version} takes no temporal_ids (video groups are 4.5's)")
            groups = check_temporal_ids(temporal_ids, len(images))
        skipped = skipped_frames(groups) if groups else set()
        placeholders = [self.placeholder(image.plan, i, use_image_id) for i, image in enumerate(images)]
        text = expand_image_tags(prompt, placeholders, skipped)
        if max_length is not None and len(text) // self.tokenizer.max_token_chars > max_length:
            # refused before tokenizing: megabytes of text take a minute and gigabytes to tokenize
            raise PromptTooLongError(
                f"the prompt is {len(text)} characters long, at least {len(text) // self.tokenizer.max_token_chars} "
                f"tokens, more than the limit of {max_length}; use a shorter text"
            )
        ids = self.tokenizer.encode(text)
        if max_length is not None and len(ids) > max_length:
            raise PromptTooLongError(
                f"the prompt is {len(ids)} tokens long after image expansion, more than the limit of "
                f"{max_length}; use fewer or smaller images (max_slice_nums) or a shorter text"
            )
        bounds = find_image_bounds(ids, self.start_ids, self.end_ids, self.span_lengths(images))
        if groups:
            crops, sizes, units = group_crops(images, groups)
        else:
            crops = [crop for image in images for crop in image.crops]
            sizes = [size for image in images for size in image.tgt_sizes.tolist()]
            units = still_units(images) if facts(self.config.version).temporal else []
        return EncodedPrompt(prompt, ids, images, bounds, crops, sizes, units, self.positions(ids, images, bounds))

    def span_lengths(self, images: list[EncodedImage]) -> int | list[int]:
        """What find_image_bounds expects: every span query_num long, or (4.6/4.7) one span per
        crop of its merged patches."""
        if not facts(self.config.version).downsample:
            return self.config.query_num
        return [self.config.crop_tokens(size) for image in images for size in image.tgt_sizes.tolist()]

    def positions(self, ids: list[int], images: list[EncodedImage], bounds: list) -> torch.Tensor | None:
        """4.7's (3, T) canvas positions from each image's spans, token grids and slice grid;
        None where positions just count tokens."""
        if not facts(self.config.version).canvas_rope:
            return None
        side, layouts, offset = self.config.merge_per_side, [], 0
        for image in images:
            count = image.plan.num_crops
            grids = [(rows // side, cols // side) for rows, cols in image.tgt_sizes.tolist()]
            grid = image.plan.grid
            layouts.append(ImageLayout(bounds[offset : offset + count], grids, grid and (grid[1], grid[0])))
            offset += count
        (newline,) = self.tokenizer.encode("\n")
        return canvas_positions(ids, layouts, self.start_ids | self.end_ids, newline)

    def __call__(
        self,
        messages: list,
        *,
        max_slice_nums: int | None = None,
        use_image_id: bool | None = None,
        system_prompt: str | None = None,
        max_length: int | None = None,
        add_generation_prompt: bool = True,
        temporal_ids: list | None = None,
        thinking: bool | None = None,
    ) -> ModelInputs:
        """Process one conversation, or a batch given as a list of conversations.

        Args:
            messages: [{"role", "content"}, ...] or a list of such lists (a batch).
            max_slice_nums: per-call cap on slices per image (1 = a single view).
            use_image_id: 2.6 only: write `<image_id>i</image_id>` before each image.
            system_prompt: prepended as a system message.
            max_length: longest accepted prompt in tokens; longer is a PromptTooLongError.
            add_generation_prompt: end with the assistant turn opener.
            temporal_ids: 4.5: the images are video frames packed in these groups of time ids
                (0.1 s units), e.g. [[0, 3, 6], [9, 12]]; for a batch, one such list per sample.
            thinking: 4.5's enable_thinking (off unless True, as in the official chat()).
        """
        batch = messages if messages and isinstance(messages[0], list) else [messages]
        per_sample = _per_sample_temporal_ids(temporal_ids, len(batch))
        if facts(self.config.version).thinking and add_generation_prompt:
            thinking = bool(thinking)
        samples = []
        for conversation, sample_ids in zip(batch, per_sample):
            prompt, sources = self.build_prompt(conversation, system_prompt, add_generation_prompt, thinking)
            images = self.encode_images(sources, max_slice_nums)
            samples.append(self.encode_prompt(prompt, images, use_image_id, max_length, sample_ids))
        return replace(collate(samples), downsample_mode=self.config.downsample_mode)


def _per_sample_temporal_ids(temporal_ids, batch: int) -> list:
    """One sample's groups [[ids], ...] or a batch's [[[ids], ...], ...] -> a list per sample."""
    if temporal_ids is None:
        return [None] * batch
    nested = bool(temporal_ids) and all(
        isinstance(g, (list, tuple)) and g and all(isinstance(x, (list, tuple)) for x in g) for g in temporal_ids
    )
    per_sample = list(temporal_ids) if nested else [temporal_ids]
    if len(per_sample) != batch:
        raise PromptError(f"temporal_ids: {len(per_sample)} sample(s) of groups for a batch of {batch}")
    return per_sample


def collate(samples: list[EncodedPrompt]) -> ModelInputs:
    """Left-pad to the longest sample; image bounds move right by the padding."""
    length = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), length), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
    bounds = []
    canvas = any(s.position_ids is not None for s in samples)
    positions = torch.ones((3, len(samples), length), dtype=torch.long) if canvas else None
    for row, sample in enumerate(samples):
        pad = length - len(sample.input_ids)
        input_ids[row, pad:] = torch.tensor(sample.input_ids, dtype=torch.long)
        attention_mask[row, pad:] = 1
        bounds.append(torch.tensor(sample.image_bound, dtype=torch.long).reshape(-1, 2) + pad)
        if canvas:
            positions[:, row, pad:] = sample.position_ids
    return ModelInputs(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=[list(s.crops) for s in samples],
        tgt_sizes=[torch.tensor(s.tgt_sizes, dtype=torch.int32).reshape(-1, 2) for s in samples],
        image_bound=bounds,
        prompts=[s.prompt for s in samples],
        plans=[[image.plan for image in s.images] for s in samples],
        time_units=[s.time_units for s in samples],
        position_ids=positions,
    )
