"""The training loop: recipe-selected trainable parts, AdamW with warmup + cosine, gradient
accumulation and clipping, optional bf16 autocast and gradient checkpointing, a seed, metrics to
JSONL, atomic checkpoints with exact resume. One process, or several under `torchrun` (DDP over
gloo/NCCL) on the same code path.

Loss: sum of token cross-entropies over a step's global batch (all micro-batches of all
processes) divided by its number of supervised tokens, so a step's loss and gradient do not
depend on how the batch is split across processes or micro-batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..cpu import has_native_bf16
from ..errors import ConfigError, PromptError
from ..files import write_text_atomic
from ..jsonfile import read_jsonl
from .batching import Batch, length_grouped_order, pack, packed_batch, padded_batch
from .checkpoints import restore_rng, rng_state, save_checkpoint
from .data import IGNORE
from .feature_cache import FeatureCache
from .recipes import PARTS, Recipe


@dataclass
class World:
    rank: int = 0
    size: int = 1

    @classmethod
    def from_env(cls) -> World:
        """torchrun's RANK/WORLD_SIZE; the process group is created here when there are several."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(int(os.environ.get("RANK", "0")), size)

    def sum(self, value: float) -> float:
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor)
        return float(tensor.item())


def set_trainable(model, recipe: Recipe) -> dict[str, int]:
    """Freeze everything but the recipe's parts (and LoRA adapters); trainable counts per part."""
    for part in PARTS:
        for name, parameter in getattr(model, part).named_parameters():
            parameter.requires_grad_(part in recipe.train or (recipe.lora and ".lora_" in name))
    return trainable_counts(model)


def parameter_groups(model, recipe: Recipe) -> list[dict]:
    """The trainable parameters, in model order, grouped by learning rate: one group unless the
    recipe gives the encoder or resampler a rate of its own (e.g. a small one, so that what an
    earlier stage taught them is not trained away)."""
    own = {"vpm.": recipe.vpm_learning_rate, "resampler.": recipe.resampler_learning_rate}
    groups: dict[float, list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            rate = next((r for prefix, r in own.items() if r is not None and name.startswith(prefix)), None)
            groups.setdefault(recipe.learning_rate if rate is None else rate, []).append(parameter)
    return [{"params": parameters, "lr": rate} for rate, parameters in groups.items()]


def trainable_counts(model) -> dict[str, int]:
    counts = {part: 0 for part in PARTS}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            part = next((p for p in PARTS if f"{p}." in name), "other")
            counts[part] = counts.get(part, 0) + parameter.numel()
    return counts


def computes_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively (where "auto" precision autocasts to it)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return has_native_bf16()


def token_loss_sum(module, batch: Batch) -> torch.Tensor:
    """Summed cross-entropy of the batch's supervised tokens (targets are pre-shifted)."""
    logits = module(
        batch.input_ids,
        batch.pixel_values,
        batch.tgt_sizes,
        batch.image_bound,
        batch.attention_mask,
        batch.position_ids,
        image_features=batch.image_features,
    )  # (B, T, V)
    return F.cross_entropy(
        logits.flatten(0, 1).float(), batch.targets.flatten().to(logits.device), ignore_index=IGNORE, reduction="sum"
    )


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Trains `model` (a MiniCPMV) on `dataset` (a ChatDataset) following `recipe`."""

    def __init__(
        self,
        model,
        dataset,
        recipe: Recipe,
        output: str | Path,
        source: str | Path,
        world: World | None = None,
        progress: bool = True,
    ):
        self.model, self.dataset, self.recipe = model, dataset, recipe
        if recipe.packing and any(kind != "full_attention" for kind in model.config.llm.layer_types):
            # a block-diagonal mask separates packed samples in attention only: a recurrent layer
            # would carry one sample's state into the next
            raise ConfigError(
                f"recipe {recipe.name}: packing is not possible with MiniCPM-V {model.config.version}'s "
                "recurrent (Gated DeltaNet) layers; set packing=false"
            )
        self.output, self.source = Path(output), Path(source)
        self.world = world or World()
        self.progress = progress and self.world.rank == 0
        self.counts = set_trainable(model, recipe)
        model.llm.gradient_checkpointing = recipe.gradient_checkpointing
        self.module = self._wrap(model)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, recipe),
            lr=recipe.learning_rate,
            betas=(0.9, recipe.adam_beta2),
            weight_decay=recipe.weight_decay,
        )
        warmup = max(1, math.ceil(recipe.warmup_ratio * recipe.max_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_with_warmup(step, recipe.max_steps, warmup)
        )
        self.step, self.epoch, self.cursor = 0, 0, 0
        self.autocast = self._autocast_dtype()
        # where samples come from: the dataset, or its samples with their images already encoded
        self.samples = FeatureCache(model, dataset, self.autocast) if recipe.cache_image_features else dataset
        self._order: list[int] | None = None
        self._empty = None  # see _stand_in

    def _wrap(self, model):
        if self.world.size == 1:
            return model
        if self.recipe.distributed == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in model.llm.model.layers:
                fully_shard(layer)
            return fully_shard(model)
        from torch.nn.parallel import DistributedDataParallel

        # frozen parts, and a resampler a text-only batch does not use: not every parameter gets a gradient
        return DistributedDataParallel(model, find_unused_parameters=True)

    def _autocast_dtype(self) -> torch.dtype | None:
        wanted = self.recipe.precision
        if wanted == "bfloat16" or wanted == "auto" and computes_bf16(self.model.device):
            return torch.bfloat16
        return None

    # ---- data ------------------------------------------------------------------------------

    def _epoch_order(self) -> list[int]:
        if self._order is None:
            seed = self.recipe.seed * 1_000_003 + self.epoch
            if self.recipe.group_by_length:
                lengths = [self._length_hint(i) for i in range(len(self.dataset))]
                self._order = length_grouped_order(lengths, self.global_batch * 8, seed)
            else:
                self._order = list(range(len(self.dataset)))
                random.Random(seed).shuffle(self._order)
        return self._order

    def _length_hint(self, index: int) -> int:
        """Text length (characters) as the grouping key; negative for text-only samples."""
        record = self.dataset.records[index]
        text = (
            sum(len(str(t.get("content", ""))) for t in record.get("conversations", []) if isinstance(t, dict))
            if isinstance(record, dict)
            else 0
        )
        return text if isinstance(record, dict) and record.get("image") else -max(1, text)

    @property
    def global_batch(self) -> int:
        return self.recipe.batch_size * self.recipe.grad_accum * self.world.size

    def _next_indices(self) -> list[int]:
        """The next global batch of sample indices (epochs wrap around, reshuffled)."""
        if not len(self.dataset):  # nothing to cycle through: the loop below would never end
            raise PromptError(f"{self.dataset.path}: no samples")
        indices = []
        while len(indices) < self.global_batch:
            order = self._epoch_order()
            if self.cursor >= len(order):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
                continue
            take = order[self.cursor : self.cursor + self.global_batch - len(indices)]
            indices += take
            self.cursor += len(take)
        return indices

    def _micro_batches(self, indices: list[int]) -> list[Batch]:
        """This process's share of a global batch: exactly `grad_accum` model batches, so every
        process joins the same collectives; a micro-batch whose samples were all bad becomes
        a stand-in that adds nothing (a valid sample with every target ignored)."""
        mine = indices[self.world.rank :: self.world.size]
        size = self.recipe.batch_size
        batches = []
        for start in range(0, len(mine), size):
            samples = [s for s in (self.samples[i] for i in mine[start : start + size]) if s is not None]
            if not samples or self.world.size > 1 and not any(s.images for s in samples):
                # every process must run the same parts in every micro-batch (else DDP/FSDP
                # collectives disagree): an image sample that adds no loss keeps the vision parts in
                samples.append(self._stand_in())
            if self.recipe.packing:
                batches.append(packed_batch(pack(samples, self.recipe.max_length), self.recipe.max_length))
            else:
                batches.append(padded_batch(samples))
        return batches

    def _stand_in(self):
        """A sample (with images if the data has any) whose targets are all ignored."""
        if self._empty is None:
            usable = [s for s in (self.samples[i] for i in range(len(self.dataset))) if s is not None]
            sample = next((s for s in usable if s.images), usable[0] if usable else None)
            if sample is None:
                raise PromptError(f"{self.dataset.path}: no usable sample ({dict(self.dataset.skipped)} skipped)")
            self._empty = dataclasses.replace(sample, targets=[IGNORE] * len(sample))
        return self._empty

    # ---- the loop --------------------------------------------------------------------------

    def train_step(self) -> dict:
        start = time.perf_counter()
        self.module.train()
        record, tokens_seen = self._accumulate_gradients()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, self.recipe.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        seconds = time.perf_counter() - start
        return {
            "step": self.step,
            **record,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": tokens_seen / seconds,
            "seconds": seconds,
            "epoch": self.epoch,
            "skipped": dict(self.dataset.skipped),
        }

    def _sync(self, number: int, count: int):
        """DDP reduces gradients once, after the last micro-batch: no_sync before it."""
        sync = number == count or not hasattr(self.module, "no_sync")
        return contextlib.nullcontext() if sync else self.module.no_sync()

    def _accumulate_gradients(self) -> tuple[dict, int]:
        """Backward over this step's micro-batches; (metrics, real tokens seen by all processes)."""
        batches = self._micro_batches(self._next_indices())
        tokens = self.world.sum(sum(b.supervised_tokens for b in batches))
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        total = 0.0
        for number, batch in enumerate(batches, 1):
            with self._sync(number, len(batches)):
                with torch.autocast(self.model.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                    loss_sum = token_loss_sum(self.module, batch)
                if not loss_sum.requires_grad:  # nothing trainable took part (stage 1, text only): still a backward
                    loss_sum = loss_sum + sum(p.sum() for p in trainable) * 0.0
                # DDP averages gradients over processes: scale so that the result is sum / global tokens
                (loss_sum * self.world.size / max(tokens, 1)).backward()
            total += float(loss_sum.detach())
        tokens_seen = self.world.sum(sum(b.real_tokens for b in batches))  # padding is not throughput
        return {"loss": self.world.sum(total) / max(tokens, 1), "supervised_tokens": int(tokens)}, tokens_seen

    def train(self, max_steps: int | None = None) -> list[dict]:
        """Run until `recipe.max_steps` (or `max_steps` more steps); saves at the end."""
        stop = self.recipe.max_steps if max_steps is None else min(self.recipe.max_steps, self.step + max_steps)
        history = []
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=stop, initial=self.step, desc=f"train {self.recipe.name}", unit="step")
        while self.step < stop:
            record = self.train_step()
            history.append(record)
            self._log(record)
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                bar.update(1)
            if self.recipe.save_every and self.step % self.recipe.save_every == 0 and self.step < stop:
                self.save()
        if bar is not None:
            bar.close()
        self.save()
        return history

    def _log(self, record: dict) -> None:
        if self.world.rank == 0:
            self.output.mkdir(parents=True, exist_ok=True)
            with open(self.output / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    # ---- checkpoints -----------------------------------------------------------------------

    def state(self, optimizer_state: dict) -> dict:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "recipe": asdict(self.recipe),
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "skipped": dict(self.dataset.skipped),
        }

    def save(self) -> Path | None:
        weights, optimizer_state = None, self.optimizer.state_dict()
        if self.world.size > 1:
            dist.barrier()
            if self.recipe.distributed == "fsdp":  # gather the shards (a collective: every process)
                weights, optimizer_state = _full_state(self.model, self.optimizer)
        path, extra = None, None
        if self.recipe.lora:
            from .lora import official_state, save_adapter

            whole = weights if weights is not None else self.model.state_dict()
            weights = official_state(whole)
            extra = lambda folder: save_adapter(whole, self.recipe, folder)  # noqa: E731
        if self.world.rank == 0:
            path = save_checkpoint(
                self.output, self.step, self.model, self.source, self.state(optimizer_state), weights, extra
            )
        if self.world.size > 1:
            dist.barrier()
        return path

    def load_state(self, state: dict) -> None:
        """Continue exactly where a checkpoint's run stopped (its weights are already loaded)."""
        self.step, self.epoch, self.cursor = state["step"], state["epoch"], state["cursor"]
        if self.world.size > 1 and self.recipe.distributed == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.model, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
            )
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        self._order = None
        _truncate_metrics(self.output / "metrics.jsonl", self.step)


def _full_state(model, optimizer) -> tuple[dict, dict]:
    """Whole model and optimizer state of a sharded (FSDP) model, on the CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines a killed run wrote after its last checkpoint: the resumed run rewrites them."""
    kept = [
        json.dumps(record) + "\n"
        for record in read_jsonl(path)
        if isinstance(record, dict) and record.get("step", 0) <= step
    ]
    if path.exists():
        write_text_atomic(path, "".join(kept))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
