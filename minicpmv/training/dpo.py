"""DPO on this package's trainer (the RLAIF-V recipe): preference pairs (image, question, chosen,
rejected), a reference pass first (summed log-probs of both answers under the frozen start
model, stored in OUTPUT/reference_logps.json; the reference is never held during training), then
the sigmoid DPO loss on summed log-probs, chosen and rejected in one concatenated forward:

    loss = -log sigmoid(beta * ((pi_w - pi_l) - (ref_w - ref_l)))  [- sft_weight * pi_w]

Rafailov et al. 2023, "Direct Preference Optimization"; beta 0.1 and no SFT term by default, as
the RLAIF-V training scripts. Targets are this package's pre-shifted ones: logits[:, t] scores
targets[:, t], so a sequence's log-prob sums over its supervised positions.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import PromptError
from ..files import write_text_atomic
from .batching import padded_batch
from .data import IGNORE, SkippedSample

REFERENCE_FILE = "reference_logps.json"


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) summed log-probabilities of each row's supervised targets; logits (B, T, V)."""
    mask = targets != IGNORE
    picked = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards); rewards = beta * (policy - reference)."""
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards.detach(), rejected_rewards.detach()


def read_pairs(path: str | Path) -> list[dict]:
    """Pair records from a JSON list or JSONL file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        records = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PromptError(f"{path}: cannot read the preference pairs ({exc})") from None
    if not records:
        raise PromptError(f"{path}: no preference pairs")
    return records


def _image(record: dict, root: Path):
    """The pair's image: a path (image_path or image, relative to the data file) or the RLAIF-V
    dataset's {"bytes": ...} (raw or base64)."""
    import io

    image = record.get("image", record.get("image_path"))
    if isinstance(image, dict) and "bytes" in image:
        data = image["bytes"]
        return io.BytesIO(base64.b64decode(data) if isinstance(data, str) else bytes(data))
    if isinstance(image, str):
        return root / image
    if image is None:
        return None
    raise SkippedSample("malformed", "'image' is neither a path nor {'bytes': ...}")


class PreferenceDataset:
    """Pairs built into (chosen, rejected) TrainSamples on access; a bad pair gives None and is
    counted in `skipped`."""

    def __init__(self, path: str | Path, builder):
        self.path = Path(path)
        self.records = read_pairs(self.path)
        self.builder = builder
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        try:
            if not all(isinstance(record.get(k), str) for k in ("question", "chosen", "rejected")):
                raise SkippedSample("malformed", "question, chosen and rejected must be strings")
            image = _image(record, self.path.parent)
            user = {"role": "user", "content": [image, record["question"]] if image is not None else record["question"]}
            return tuple(
                self.builder.build([user, {"role": "assistant", "content": record[side]}])
                for side in ("chosen", "rejected")
            )
        except SkippedSample as exc:
            if self.skipped[f"#{index}"] == 0:
                self.skipped[exc.reason] += 1
                warnings.warn(f"{self.path}: pair {index} skipped ({exc})", stacklevel=2)
            self.skipped[f"#{index}"] = 1
            return None


def pair_logps(module, pairs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the chosen and rejected answers of `pairs`, in one forward of the
    concatenated batch [chosen...; rejected...]."""
    batch = padded_batch([c for c, _ in pairs] + [r for _, r in pairs])
    logits = module(
        batch.input_ids,
        batch.pixel_values,
        batch.tgt_sizes,
        batch.image_bound,
        batch.attention_mask,
        batch.position_ids,
        image_features=batch.image_features,
    )  # (2n, T, V)
    logps = sequence_logps(logits, batch.targets.to(logits.device))
    return logps[: len(pairs)], logps[len(pairs) :]


@torch.no_grad()
def reference_logps(model, dataset: PreferenceDataset, output: Path, autocast, world) -> dict[int, list[float]]:
    """{pair index: [chosen, rejected]} under the model as it is now (the start model), read from
    OUTPUT/reference_logps.json when a run already computed it. Processes share the pairs."""
    path = output / REFERENCE_FILE
    if path.exists():
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    was_training = model.training
    model.eval()
    mine = {}
    for index in range(world.rank, len(dataset), world.size):
        pair = dataset[index]
        if pair is None:
            continue
        with torch.autocast(model.device.type, dtype=autocast, enabled=autocast is not None):
            chosen, rejected = pair_logps(model, [pair])
        mine[index] = [float(chosen[0]), float(rejected[0])]
    model.train(was_training)
    if world.size > 1:
        import torch.distributed as dist

        gathered = [None] * world.size
        dist.all_gather_object(gathered, mine)
        mine = {k: v for part in gathered for k, v in part.items()}
    if world.rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(mine))
    return mine


def make_dpo_trainer(model, dataset: PreferenceDataset, recipe, output, source, world=None, progress=True):
    """A Trainer whose steps are DPO steps over `dataset`'s pairs (reference pass first)."""
    from .trainer import Trainer

    class DPOTrainer(Trainer):
        def __init__(self):
            super().__init__(model, dataset, recipe, output, source, world, progress)
            self.reference = reference_logps(model, dataset, self.output, self.autocast, self.world)
            if not self.reference:
                raise PromptError(f"{dataset.path}: no usable pair ({dict(dataset.skipped)} skipped)")

        def _pair_chunks(self) -> list[tuple[list, float]]:
            """This process's share of the step's pairs, in micro-batches, each with a weight: a
            micro-batch whose pairs were all unusable runs a pair with weight 0, so that every
            process joins the same collectives."""
            mine = self._next_indices()[self.world.rank :: self.world.size]
            chunks = []
            for start in range(0, len(mine), self.recipe.batch_size):
                chunk = [(i, self.dataset[i]) for i in mine[start : start + self.recipe.batch_size]]
                chunk = [(i, pair) for i, pair in chunk if pair is not None and i in self.reference]
                if not chunk:
                    first = min(self.reference)
                    chunks.append(([(first, self.dataset[first])], 0.0))
                else:
                    chunks.append((chunk, 1.0))
            return chunks

        def _accumulate_gradients(self) -> tuple[dict, int]:
            chunks = self._pair_chunks()
            pairs = self.world.sum(sum(len(c) for c, weight in chunks if weight))
            sums = Counter()
            for number, (chunk, weight) in enumerate(chunks, 1):
                with self._sync(number, len(chunks)):
                    with torch.autocast(self.model.device.type, dtype=self.autocast, enabled=self.autocast is not None):
                        chosen, rejected = pair_logps(self.module, [pair for _, pair in chunk])
                    reference = torch.tensor([self.reference[i] for i, _ in chunk], dtype=torch.float32)
                    losses, chosen_rewards, rejected_rewards = dpo_loss(
                        chosen, rejected, reference[:, 0], reference[:, 1], self.recipe.dpo_beta
                    )
                    total = losses.sum() - self.recipe.sft_weight * chosen.sum()
                    (total * weight * self.world.size / max(pairs, 1)).backward()
                if weight:
                    sums["loss"] += float(total.detach())
                    sums["reward_accuracy"] += float((chosen_rewards > rejected_rewards).sum())
                    sums["reward_margin"] += float((chosen_rewards - rejected_rewards).sum())
                    sums["reward_chosen"] += float(chosen_rewards.sum())
                    sums["reward_rejected"] += float(rejected_rewards.sum())
                    sums["logp_chosen"] += float(chosen.detach().sum())
                    sums["logp_rejected"] += float(rejected.detach().sum())
                    sums["tokens"] += sum(len(c) + len(r) for _, (c, r) in chunk)
            record = {
                key: self.world.sum(sums[key]) / max(pairs, 1)
                for key in (
                    "loss",
                    "reward_accuracy",
                    "reward_margin",
                    "reward_chosen",
                    "reward_rejected",
                    "logp_chosen",
                    "logp_rejected",
                )
            }
            record["pairs"] = int(pairs)
            return record, int(self.world.sum(sums["tokens"]))

    return DPOTrainer()
