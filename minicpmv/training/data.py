"""Training samples from the official fine-tuning JSON: token ids, pre-shifted targets, images.

The file is a list of `{"id", "image", "conversations"}`; `image` is one path (placed at the
`<image>` tag of the first user turn, or before its text) or a dict `{"<image_00>": path, ...}`
whose tags mark the places; no `image` is a text-only sample. Relative paths are relative to
the JSON file. Records are parsed at once, images are read when a sample is used.

Label convention (the official one, docs/training.md): a token is *supervised* when it is an
assistant message's content, plus the turn's end marker (`<|im_end|>` for 2.6 and 4.5,
`<|eot_id|>` for 2.5; 2.0 and 1.0 append EOS to the last message only). 4.5's template closes an
empty think block before the last answer; that block is not supervised. Targets are **pre-shifted**: `targets[i-1] =
ids[i]` for every supervised token i, and the last supervised position before an unsupervised
token gets the end token (so every assistant turn learns to end). The loss is then plain
cross-entropy of `logits[t]` against `targets[t]`, with no second shift; -100 is ignored.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ImageError, MiniCPMVError, PromptError
from ..processing.chat_format import ImagePart, normalize_messages, render_prompt
from ..processing.placeholders import IMAGE_TAG, expand_image_tags, find_image_bounds
from ..versions import facts

IGNORE = -100
MULTI_IMAGE_TAG = re.compile(r"<image_\d+>")


@dataclass
class TrainSample:
    input_ids: list[int]
    targets: list[int]  # pre-shifted, IGNORE where not supervised
    images: list = field(default_factory=list)  # EncodedImage, in placeholder order
    image_bound: list = field(default_factory=list)  # [start, end) of each crop's feature span
    image_features: object = None  # (crops, Q, D) tensor in place of the crops' pixels (feature_cache.py)
    position_ids: object = None  # 4.7: (3, T) canvas positions (None: positions count tokens)

    def __len__(self) -> int:
        return len(self.input_ids)


class SkippedSample(Exception):
    """A record that cannot be trained on; `reason` is the counted category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def read_records(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PromptError(f"{path}: cannot read the training data ({exc})") from None
    if not isinstance(records, list):
        raise PromptError(f"{path}: expected a JSON list of samples")
    if not records:
        raise PromptError(f"{path}: no samples (an empty list)")
    return records


def to_messages(record: dict, root: Path) -> list[dict]:
    """An official record as chat messages with image parts (paths resolved against `root`)."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise SkippedSample("malformed", "no conversations")
    if not any(isinstance(t, dict) and t.get("role") == "assistant" for t in turns):
        raise SkippedSample("no_assistant_turn", "no assistant turn to learn from")
    images = record.get("image")
    messages = [{"role": t.get("role"), "content": t.get("content")} for t in turns if isinstance(t, dict)]
    if not all(isinstance(m["content"], str) for m in messages):
        raise SkippedSample("malformed", "a turn's content is not a string")
    if isinstance(images, str):
        user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if user is None:
            raise SkippedSample("malformed", "an image but no user turn to put it in")
        text = messages[user]["content"]
        parts = _split_tags(text, {"<image>": root / images}) if "<image>" in text else [root / images, text]
        messages[user] = {"role": "user", "content": parts}
    elif isinstance(images, dict):
        if not all(isinstance(value, str) and value for value in images.values()):
            raise SkippedSample("malformed", "'image' maps a tag to something that is not a path")
        paths = {tag: root / value for tag, value in images.items()}
        for message in messages:
            if MULTI_IMAGE_TAG.search(message["content"]):
                message["content"] = _split_tags(message["content"], paths)
    elif images is not None:
        raise SkippedSample("malformed", "'image' is neither a path nor a dict of tags to paths")
    return messages


def _split_tags(text: str, paths: dict) -> list:
    pattern = "(" + "|".join(re.escape(tag) for tag in paths) + ")"
    parts = []
    for piece in re.split(pattern, text):
        if piece in paths:
            parts.append(paths[piece])
        elif piece.strip():
            parts.append(piece.strip())
    return parts


class SampleBuilder:
    """Messages -> TrainSample with one checkpoint's processor (chat format, slicing, images)."""

    def __init__(self, processor, max_length: int = 2048, max_slice_nums: int | None = None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.version = processor.config.version
        self.max_length = max_length
        self.max_slice_nums = max_slice_nums
        marker = facts(self.version).end_marker  # None: the tokenizer's EOS, appended
        self.marker = marker
        self.end_id = self.tokenizer.require_id(marker or self.tokenizer.special_tokens["eos_token"])
        self.bos = self.tokenizer.encode("")[:1]  # what encode() adds by itself, stripped from later pieces

    def build(self, messages: list[dict]) -> TrainSample:
        try:
            pieces = self._pieces(messages)
            images = self.processor.encode_images(
                [p.source for m in normalize_messages(messages) for p in m.parts if isinstance(p, ImagePart)],
                self.max_slice_nums,
            )
        except ImageError as exc:
            raise SkippedSample("bad_image", str(exc)) from None
        except MiniCPMVError as exc:
            raise SkippedSample("malformed", str(exc)) from None
        placeholders = [self.processor.placeholder(image.plan, i) for i, image in enumerate(images)]
        ids, supervised, used = [], [], 0
        for text, is_answer in pieces:
            tags = text.count(IMAGE_TAG)
            piece_ids = self.tokenizer.encode(expand_image_tags(text, placeholders[used : used + tags]))
            used += tags
            if ids and self.bos and piece_ids[:1] == self.bos:
                piece_ids = piece_ids[1:]
            ids += piece_ids
            supervised += [is_answer] * len(piece_ids)
        if self.marker is None:  # 2.0: EOS closes the last message only
            ids.append(self.end_id)
            supervised.append(True)
        if len(ids) > self.max_length:
            raise SkippedSample("too_long", f"{len(ids)} tokens, more than max_length {self.max_length}")
        try:
            spans = self.processor.span_lengths(images)
            bounds = find_image_bounds(ids, self.processor.start_ids, self.processor.end_ids, spans)
        except PromptError as exc:
            raise SkippedSample("malformed", str(exc)) from None
        positions = self.processor.positions(ids, images, bounds)
        return TrainSample(ids, shifted_targets(ids, supervised, self.end_id), images, bounds, None, positions)

    def _opener(self, before: list, full: str) -> str:
        """The prompt up to where an answer starts. A thinking model's template (4.5) writes the
        last answer as `<think>\n{reasoning}\n</think>\n\n{content}`: an empty think block
        belongs to the opener (not learnt, as inference puts it in the prompt), a reasoning
        answer's `<think>\n` too; earlier answers have no block. The longest opener the rendered
        conversation continues with is the one."""
        template, specials = self.tokenizer.chat_template, self.tokenizer.special_tokens
        choices = (False, True, None) if facts(self.version).thinking else (None,)
        for thinking in choices:
            opened = render_prompt(before, self.version, template, specials, True, thinking)
            if full.startswith(opened):
                return opened
        return opened

    def _pieces(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """The rendered conversation cut into (text, is_supervised) pieces: each assistant
        answer (with its end marker) is a piece of its own, so it tokenizes on its own."""
        normalized = normalize_messages(messages)
        try:
            self.processor.check_text(normalized)
        except PromptError as exc:
            raise SkippedSample("image_marker_text", str(exc)) from None
        template, specials = self.tokenizer.chat_template, self.tokenizer.special_tokens
        full = render_prompt(normalized, self.version, template, specials, add_generation_prompt=False)
        pieces, done = [], 0
        for index, message in enumerate(normalized):
            if message.role != "assistant":
                continue
            opened = self._opener(normalized[:index], full)
            if self.marker:  # the answer runs to its end marker
                end = full.find(self.marker, len(opened)) + len(self.marker)
                closed = full[:end]
            else:
                closed = render_prompt(normalized[: index + 1], self.version, template, specials, False)
                end = len(closed)
            if not (full.startswith(closed) and closed.startswith(opened) and end > len(opened)):
                raise SkippedSample("malformed", "the chat template does not render turn by turn")
            pieces += [(full[done : len(opened)], False), (full[len(opened) : end], True)]
            done = end
        if normalized[-1].role != "assistant":  # after the last answer only the template's tail follows
            pieces.append((full[done:], False))
        return [(text, answer) for text, answer in pieces if text]


def shifted_targets(ids: list[int], supervised: list[bool], end_id: int) -> list[int]:
    """The official pre-shifted targets (module docstring)."""
    targets = [IGNORE] * len(ids)
    for i in range(1, len(ids)):
        if supervised[i]:
            targets[i - 1] = ids[i]
        elif supervised[i - 1]:  # the token after an answer: its last position learns to end
            targets[i - 1] = end_id
    if not any(t != IGNORE for t in targets):
        raise SkippedSample("no_supervised_token", "nothing left to learn after masking")
    return targets


class ChatDataset:
    """The records of one JSON file, built into TrainSamples on access; bad ones give None and
    are counted in `skipped` (warned about once each) instead of stopping a run."""

    def __init__(self, path: str | Path, builder: SampleBuilder):
        self.path = Path(path)
        self.records = read_records(self.path)
        self.builder = builder
        self.skipped: Counter = Counter()
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> TrainSample | None:
        record = self.records[index]
        try:
            if not isinstance(record, dict):
                raise SkippedSample("malformed", "not an object")
            return self.builder.build(to_messages(record, self.path.parent))
        except SkippedSample as exc:
            if index not in self._warned:
                self._warned.add(index)
                self.skipped[exc.reason] += 1
                warnings.warn(
                    f"{self.path}: sample {record.get('id', index) if isinstance(record, dict) else index} "
                    f"skipped ({exc})",
                    stacklevel=2,
                )
            return None
