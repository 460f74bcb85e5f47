"""Vision pre-training with label heads: our stand-in for the pre-trained SigLIP the paper starts
from, as the demo recipe's stage0 stands in for its pre-trained LLM.

The paper's encoder arrives knowing what things look like; a random one, trained only through
the LLM's loss, learnt colours and counts but hardly shapes or places (research/demo-model-log.md, "Why
shape and position are not learnt"). Given the answer's gradient directly, through a linear
classifier on the mean of the resampler's outputs, it learnt shapes within a few hundred steps,
and an LLM then read them from its tokens. So here the vision encoder and the resampler train on
labelled images (a `examples(split, index) -> (image, {label: class})` callable), one head per
label, labels added one after another (the loss is the sum over the labels so far): trained on
all labels from the start, the easy one (colour) took over and shape stayed at a third
(measured). What is not among the labels can be lost: trained on shape, column and row only, the
encoder stopped telling colours apart (the finished model answered 4 of 31 colour questions,
against 24 without vision pre-training), so the demo recipe ends with colour.

A label may also name a class per region of the image (what each of a 3x3 grid's cells holds,
in scenes of several objects): its head reads the tokens through a learned query per region, so
the resampler learns to keep apart what is where, which the LLM needs to say which colour the
circle is when there are four things. A whole-image label's head reads the tokens' mean.

Images come one per sample in a single view, each at a resolution drawn from `resolutions`, so
the encoder knows the objects at stage1's 224 px as well as at 448 px. The LLM is untouched.

For a model whose LLM already reads some of the tokens (the demo's pointed queries), two
settings leave those tokens usable: `free_queries` trains only the last resampler queries
(added by scripts/grow_queries.py), and `kept_tokens` trains everything while holding the first
tokens of chosen images to a frozen copy's.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..files import write_text_atomic
from ..model.checkpoint import load_model
from ..processing.processor import MiniCPMVProcessor
from ..training.checkpoints import latest_checkpoint, save_checkpoint
from ..training.run import draw_loss_curve
from ..training.trainer import computes_bf16, seed_everything

# (split, index) -> (PIL image, {label name: class name, or a tuple of class names: one per region})
Examples = Callable[[str, int], tuple]
# an example's labels may say {KEPT: False}: with kept_tokens, its tokens are free to change
KEPT = "kept tokens"


@dataclass
class VisionPretraining:
    labels: tuple[str, ...]  # trained one after another, in this order
    steps_per_label: int = 600
    batch_size: int = 16
    learning_rate: float = 3e-4
    resolutions: tuple[int, ...] = (224, 448)
    test_images: int = 200  # held out ("test" split of `examples`), scored after each label
    seed: int = 0
    kept: tuple[str, ...] = ()  # labels learnt by an earlier run, in the loss from the first step so they stay
    # label -> weight of its "none" class in the loss: on a page slice 95% of the cells are blank,
    # and at weight 1 the head learnt to call every cell blank (0.0% of the inked cells named)
    none_weight: Mapping[str, float] = dataclasses.field(default_factory=dict)
    per_token: tuple[str, ...] = ()  # region labels read by a TokenGridHead: cell by cell, each from its own token
    probe: bool = False  # only the heads train: what the frozen encoder and resampler already hold
    # > 0: only the last N resampler queries train (scripts/grow_queries.py adds them); the encoder,
    # the rest of the resampler and the first queries stay, so the first tokens of a slice are unchanged
    free_queries: int = 0
    # > 0: the first N tokens of every image (but those labelled {KEPT: False}) are held to what the
    # model gave at the start (a frozen copy), by their squared error relative to the start's (times
    # kept_tokens_weight): an LLM that learnt to read those tokens still can, while the rest learn the labels
    kept_tokens: int = 0
    kept_tokens_weight: float = 10.0

    def __post_init__(self):
        if not self.labels:
            raise ConfigError("vision pre-training needs at least one label")
        for name in ("steps_per_label", "batch_size", "test_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.free_queries < 0 or self.kept_tokens < 0:
            raise ConfigError(
                f"free_queries and kept_tokens must be 0 or more, got {self.free_queries}, {self.kept_tokens}"
            )

    @property
    def total_steps(self) -> int:
        return self.steps_per_label * len(self.labels)


class MeanHead(torch.nn.Module):
    """A linear classifier on the mean of an image's tokens: a label about the whole image."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.classify = torch.nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classify(tokens.mean(1))  # (N, Q, D) -> (N, C)


class RegionHead(torch.nn.Module):
    """A label per region of the image: each region has a learned query that picks the image's
    tokens it reads (one attention, as the LLM reads them), and one shared classifier names what
    it found, so that a red circle looks the same to the LLM wherever it is."""

    def __init__(self, dim: int, classes: int, regions: int):
        super().__init__()
        self.queries = torch.nn.Parameter(torch.randn(regions, dim) * dim**-0.5)
        self.classify = torch.nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = torch.einsum("nqd,rd->nrq", tokens, self.queries).softmax(-1)  # (N, R, Q)
        return self.classify(weights @ tokens)  # (N, R, D) -> (N, R, C)


class TokenGridHead(torch.nn.Module):
    """A class per cell of a square grid of `regions` cells, read token by token: the resampler's
    queries, a square grid themselves, each name the cells of their block (2x2 cells for 64
    queries on 16x16 cells). Nothing chooses the token: query i must hold block i, which is where
    the LLM, reading tokens in order, can find it. A `RegionHead` on a page's 16x16 cells, which
    must find each cell's token by content, named none of the inked cells (0.4% after 400 steps)."""

    def __init__(self, dim: int, classes: int, regions: int, queries: int):
        super().__init__()
        self.side, self.token_side = math.isqrt(regions), math.isqrt(queries)
        if self.side**2 != regions or self.token_side**2 != queries or self.side % self.token_side:
            raise ConfigError(f"{regions} cells cannot be split into blocks over {queries} queries")
        self.block = self.side // self.token_side
        self.classes = classes
        self.classify = torch.nn.Linear(dim, self.block**2 * classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, t, b = tokens.shape[0], self.token_side, self.block
        logits = self.classify(tokens).view(
            n, t, t, b, b, self.classes
        )  # token row, token column, cell row, cell column
        return logits.permute(0, 1, 3, 2, 4, 5).reshape(n, self.side**2, self.classes)  # cells row by row


class LabelHeads(torch.nn.Module):
    """A head per label on the resampler's outputs for an image: a `MeanHead` for a label with
    one class per image, a `RegionHead` for one with a class per region (`regions[name]`), a
    `TokenGridHead` for one named in `per_token`."""

    def __init__(
        self,
        model,
        classes: Mapping[str, Sequence[str]],
        labels: Sequence[str],
        regions: Mapping[str, int] | None = None,
        per_token: Sequence[str] = (),
    ):
        super().__init__()
        self.model = model
        dim, regions = model.config.llm.hidden_size, regions or {}
        queries = model.config.query_num
        self.heads = torch.nn.ModuleDict(
            {
                name: TokenGridHead(dim, len(classes[name]), regions[name], queries)
                if name in per_token
                else RegionHead(dim, len(classes[name]), regions[name])
                if name in regions
                else MeanHead(dim, len(classes[name]))
                for name in labels
            }
        )

    def forward(self, crops: list[torch.Tensor], sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.read(self.model.get_image_features(crops, sizes).float())  # tokens (N, Q, D)

    def read(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(tokens) for name, head in self.heads.items()}


class LabelledBatches:
    """Pixels and class indices of `examples`, each image in one view at a drawn resolution."""

    def __init__(
        self,
        processor: MiniCPMVProcessor,
        examples: Examples,
        classes: Mapping[str, Sequence[str]],
        resolutions: Sequence[int],
        seed: int,
    ):
        self.examples, self.classes = examples, classes
        self.processors = [_at_resolution(processor, size) for size in resolutions]
        self.draw = random.Random(seed)

    def batch(self, split: str, indices: Sequence[int], processor_index: int | None = None):
        crops, sizes, targets = [], [], {name: [] for name in self.classes}
        targets[KEPT] = []
        for index in indices:
            image, labels = self.examples(split, index)
            targets[KEPT].append(bool(labels.get(KEPT, True)))
            chosen = self.draw.randrange(len(self.processors)) if processor_index is None else processor_index
            encoded = self.processors[chosen].encode_images([image], max_slice_nums=1)[0]
            crops.append(encoded.crops[0])
            sizes.append(encoded.tgt_sizes[0])
            for name, choices in self.classes.items():
                value = labels[name]  # a class, or a tuple of them (one per region)
                targets[name].append(
                    [list(choices).index(v) for v in value] if isinstance(value, tuple) else list(choices).index(value)
                )
        return crops, torch.stack(sizes), {name: torch.tensor(values) for name, values in targets.items()}


def _at_resolution(processor: MiniCPMVProcessor, size: int) -> MiniCPMVProcessor:
    resized = copy.copy(processor)
    resized.config = dataclasses.replace(processor.config, scale_resolution=size)
    return resized


def pretrain_vision(
    model,
    processor: MiniCPMVProcessor,
    examples: Examples,
    classes: Mapping[str, Sequence[str]],
    settings: VisionPretraining,
    log: Callable[[dict], None] = lambda record: None,
) -> list[dict]:
    """Train `model.vpm` and `model.resampler` in place; returns the held-out accuracies measured
    after each label (every label's head so far, at every resolution). `log` gets each step."""
    every = (*settings.kept, *settings.labels)
    unknown = [name for name in every if name not in classes]
    if unknown:
        raise ConfigError(f"unknown label(s) {unknown}; the examples have {sorted(classes)}")
    seed_everything(settings.seed)
    _, first = examples("train", 0)
    regions = {name: len(first[name]) for name in every if isinstance(first[name], tuple)}
    heads = LabelHeads(model, classes, every, regions, settings.per_token)
    data = LabelledBatches(
        processor, examples, {name: classes[name] for name in every}, settings.resolutions, settings.seed
    )
    autocast = computes_bf16(model.device)
    weights = {
        name: _none_weighted(classes[name], weight, model.device) for name, weight in settings.none_weight.items()
    }
    keeper = TokenKeeper(model, settings.kept_tokens, autocast) if settings.kept_tokens else None
    vision, hooks = ([], []) if settings.probe else _vision_parameters(model, settings.free_queries)
    for parameter in model.parameters():  # the LLM never trains here; vision and heads are switched on below
        parameter.requires_grad_(False)
    scores, step, seen = [], 0, 0
    for number, label in enumerate(settings.labels):
        active = (
            *settings.kept,
            *settings.labels[: number + 1],
        )  # the labels before stay in the loss: nothing learnt is lost
        trained = [*vision, *(p for name in active for p in heads.heads[name].parameters())]
        for parameter in trained:
            parameter.requires_grad_(True)
        optimizer = torch.optim.AdamW(trained, lr=settings.learning_rate, weight_decay=0.0)
        heads.train()
        for _ in range(settings.steps_per_label):
            start = time.perf_counter()
            crops, sizes, targets = data.batch("train", range(seen, seen + settings.batch_size))
            seen += settings.batch_size
            with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=autocast):
                tokens = model.get_image_features(crops, sizes).float()  # (N, Q, D)
                logits = heads.read(tokens)
            loss = sum(
                F.cross_entropy(
                    logits[name].flatten(0, -2),
                    targets[name].flatten().to(logits[name].device),
                    weight=_as(weights.get(name), logits[name]),
                )
                for name in active
            )
            drift = keeper(crops, sizes, tokens, targets[KEPT]) if keeper else None
            if drift is not None:
                loss = loss + settings.kept_tokens_weight * drift
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            log(
                {
                    "step": step,
                    "label": label,
                    "loss": float(loss.detach()),
                    "seconds": time.perf_counter() - start,
                    **({"kept_tokens_drift": float(drift.detach())} if drift is not None else {}),
                }
            )
        scores.append({"step": step, "after": label, **held_out_accuracy(heads, data, settings, active)})
    for hook in hooks:
        hook.remove()
    return scores


class TokenKeeper:
    """The first `count` tokens of an image as a frozen copy of the model's vision parts gives
    them, and how far the model's have drifted: their mean squared difference over the copy's
    mean square (0 = unchanged)."""

    def __init__(self, model, count: int, autocast: bool):
        if count > model.config.query_num:
            raise ConfigError(f"kept_tokens {count} is more than the resampler's {model.config.query_num} queries")
        self.frozen = copy.deepcopy(model, memo={id(model.llm): None}).eval()  # vision parts only: no LLM copied
        self.count, self.autocast, self.device = count, autocast, model.device

    @torch.no_grad()
    def start_tokens(self, crops: list[torch.Tensor], sizes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.frozen.get_image_features(crops, sizes).float()[:, : self.count]  # (N, count, D)

    def __call__(
        self, crops: list[torch.Tensor], sizes: torch.Tensor, tokens: torch.Tensor, kept: torch.Tensor
    ) -> torch.Tensor | None:
        """The drift over the images marked in `kept` (bools); None when there are none."""
        chosen = kept.nonzero().flatten().tolist()
        if not chosen:
            return None
        start = self.start_tokens([crops[i] for i in chosen], sizes[chosen])
        moved = tokens[chosen, : self.count] - start
        return moved.pow(2).mean() / start.pow(2).mean().clamp_min(1e-12)


def _vision_parameters(model, free_queries: int) -> tuple[list[torch.nn.Parameter], list]:
    """What the vision pre-training trains: the encoder and resampler, or with `free_queries`
    only the query matrix, whose first rows get no gradient (AdamW then leaves them as they are);
    and the gradient hooks to remove afterwards."""
    if not free_queries:
        return [*model.vpm.parameters(), *model.resampler.parameters()], []
    query = model.resampler.query
    if free_queries >= query.shape[0]:
        raise ConfigError(
            f"free_queries {free_queries} must be fewer than the resampler's {query.shape[0]} "
            "queries (add some with scripts/grow_queries.py)"
        )
    trained_rows = torch.zeros((query.shape[0], 1), device=query.device)
    trained_rows[-free_queries:] = 1.0
    return [query], [query.register_hook(lambda grad: grad * trained_rows.to(grad.dtype))]


def _as(weight: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor | None:
    return None if weight is None else weight.to(logits.dtype)


def _none_weighted(choices: Sequence[str], weight: float, device) -> torch.Tensor:
    if "none" not in choices:
        raise ConfigError(f"none_weight needs a label with a 'none' class, not one of {list(choices)[:5]}...")
    weights = torch.ones(len(choices), device=device)
    weights[list(choices).index("none")] = weight
    return weights


@torch.no_grad()
def held_out_accuracy(
    heads: LabelHeads, data: LabelledBatches, settings: VisionPretraining, labels: Sequence[str]
) -> dict[str, float]:
    """Accuracy of the heads of `labels` on the test split, per resolution: {"shape@224": 0.9, ...}
    (of a region label: the share of regions named right; and, as "NAME@SIZE-marked", of the
    regions not "none": on a page most cells are blank, which says little about reading)."""
    heads.eval()
    correct: dict[str, int] = {}
    answers: dict[str, int] = {}
    for number, size in enumerate(settings.resolutions):
        for start in range(0, settings.test_images, 50):
            crops, sizes, targets = data.batch("test", range(start, min(start + 50, settings.test_images)), number)
            logits_of = heads(crops, sizes)
            for name in labels:
                logits = logits_of[name]
                key = f"{name}@{size}"
                right = logits.argmax(-1).cpu() == targets[name]
                correct[key] = correct.get(key, 0) + int(right.sum())
                answers[key] = answers.get(key, 0) + targets[name].numel()
                if targets[name].dim() > 1 and "none" in data.classes[name]:
                    marked = targets[name] != list(data.classes[name]).index("none")
                    correct[f"{key}-marked"] = correct.get(f"{key}-marked", 0) + int(right[marked].sum())
                    answers[f"{key}-marked"] = answers.get(f"{key}-marked", 0) + int(marked.sum())
    heads.train()
    return {key: count / answers[key] for key, count in correct.items() if answers[key]}


def run_vision_pretraining(
    model_path: str | Path,
    output: str | Path,
    examples: Examples,
    classes: Mapping[str, Sequence[str]],
    settings: VisionPretraining,
) -> Path:
    """Load `model_path`, pre-train its vision parts, save OUTPUT/checkpoint-STEPS (official
    layout; `latest` names it) with the loss per step in OUTPUT/metrics.jsonl (and loss.png) and the held-out
    accuracies in OUTPUT/accuracy.json. A finished run is returned as it is; an interrupted one
    starts again (it takes minutes)."""
    output = Path(output)
    done = latest_checkpoint(output)
    if done is not None and done.name == f"checkpoint-{settings.total_steps:06d}":
        return done
    output.mkdir(parents=True, exist_ok=True)
    print(f"vision pre-training: {', '.join(settings.labels)}, {settings.steps_per_label} steps each", flush=True)
    model = load_model(model_path).float()
    processor = MiniCPMVProcessor.from_pretrained(model_path)
    metrics = output / "metrics.jsonl"
    with open(metrics, "w", encoding="utf-8") as handle:  # an interrupted run's lines are redone

        def log(record: dict) -> None:
            handle.write(json.dumps(record) + "\n")
            if record["step"] % 100 == 0:
                handle.flush()
                print(
                    f"vision pre-training step {record['step']}/{settings.total_steps} ({record['label']}): "
                    f"loss {record['loss']:.3f}",
                    flush=True,
                )

        scores = pretrain_vision(model, processor, examples, classes, settings, log)
    for score in scores:
        print(
            "held-out accuracy after "
            + score["after"]
            + ": "
            + ", ".join(f"{key} {value:.1%}" for key, value in score.items() if "@" in key),
            flush=True,
        )
    write_text_atomic(output / "accuracy.json", json.dumps(scores, indent=1))
    draw_loss_curve(metrics, output / "loss.png")
    state = {"step": settings.total_steps, "vision_pretraining": dataclasses.asdict(settings), "accuracy": scores}
    return save_checkpoint(output, settings.total_steps, model, Path(model_path), state)
