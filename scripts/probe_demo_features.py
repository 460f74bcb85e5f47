"""What the demo model's image features hold, measured outside the LLM (research/demo-model-log.md,
"Why shape and position are not learnt").

    python scripts/probe_demo_features.py linear MODEL [--train 600] [--test 200]
    python scripts/probe_demo_features.py head MODEL [--steps 600] [--train 1200] [--test 200]

Both use one-object scenes of the generated world (a split of their own, "probe-train" /
"probe-test", so never a training or test image) in one 448-px view.

`linear`: ridge regression from the resampler's output (all queries, concatenated) to the
object's shape and to its column (left / center / right); held-out accuracy for the best of a
few ridge strengths. It says whether the features *hold* the answer, whatever the LLM does.

`head`: trains the vision encoder and resampler with a linear shape classifier on the mean of
the resampler's outputs (AdamW, lr 3e-4, batch 16, bf16 autocast where native), printing
held-out accuracy every 100 steps: how fast the encoder learns shapes when the answer's
gradient reaches it directly instead of through the LLM.
"""

from __future__ import annotations

import argparse
import time

import torch

from minicpmv.cpu import has_native_bf16
from minicpmv.demo.build import split_rng
from minicpmv.demo.scenes import COLUMNS, SHAPES, one_object_example
from minicpmv.model.checkpoint import load_model
from minicpmv.processing.processor import MiniCPMVProcessor

SEED = 7  # the probe images' own stream


def one_object_views(processor, split: str, count: int):
    """(crops, tgt_sizes, shape index, column index) of `count` one-object scenes."""
    crops, sizes, shapes, columns = [], [], [], []
    for index in range(count):
        image, labels = one_object_example(split_rng(SEED, f"probe-{split}", index))
        encoded = processor.encode_images([image], max_slice_nums=1)[0]  # pixels only: no prompt
        crops.append(encoded.crops[0])
        sizes.append(encoded.tgt_sizes[0])
        shapes.append(SHAPES.index(labels["shape"]))
        columns.append(COLUMNS.index(labels["column"]))
    return torch.stack(crops), torch.stack(sizes), torch.tensor(shapes), torch.tensor(columns)


def ridge_accuracy(train_x, train_y, test_x, test_y, classes: int) -> float:
    """Best held-out accuracy of one-hot ridge regression over a few strengths (dual form:
    far fewer samples than feature dimensions)."""
    targets = torch.nn.functional.one_hot(train_y, classes).double()
    gram = train_x @ train_x.T
    best = 0.0
    for strength in (1e1, 1e2, 1e3, 1e4):
        weights = train_x.T @ torch.linalg.solve(gram + strength * torch.eye(len(train_x), dtype=gram.dtype), targets)
        best = max(best, ((test_x @ weights).argmax(1) == test_y).double().mean().item())
    return best


def linear_probe(model, processor, train: int, test: int) -> dict[str, float]:
    def features(split, count):
        crops, sizes, shapes, columns = one_object_views(processor, split, count)
        with torch.no_grad():
            flat = model.get_image_features(list(crops), sizes).flatten(1).double()  # (n, Q*D)
        return flat, shapes, columns

    train_x, train_shape, train_column = features("train", train)
    test_x, test_shape, test_column = features("test", test)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    return {
        "shape": ridge_accuracy(train_x, train_shape, test_x, test_shape, len(SHAPES)),
        "column": ridge_accuracy(train_x, train_column, test_x, test_column, 3),
    }


def train_shape_head(model, processor, steps: int, train: int, test: int, seed: int = 0) -> list[tuple[int, float]]:
    torch.manual_seed(seed)
    train_crops, train_sizes, train_shapes, _ = one_object_views(processor, "train", train)
    test_crops, test_sizes, test_shapes, _ = one_object_views(processor, "test", test)
    head = torch.nn.Linear(model.config.llm.hidden_size, len(SHAPES))
    params = [*model.vpm.parameters(), *model.resampler.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-4)

    def logits(crops, sizes):
        return head(model.get_image_features(list(crops), sizes).float().mean(1))  # (n, Q, D) -> (n, shapes)

    curve, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        batch = torch.randint(0, train, (16,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=has_native_bf16()):
            loss = torch.nn.functional.cross_entropy(
                logits(train_crops[batch], train_sizes[batch]), train_shapes[batch]
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == steps:
            with torch.no_grad():
                accuracy = (logits(test_crops, test_sizes).argmax(1) == test_shapes).double().mean().item()
            curve.append((step, accuracy))
            print(
                f"step {step}: loss {loss.item():.3f}, held-out shape accuracy {accuracy:.1%} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe", choices=["linear", "head"])
    parser.add_argument("model")
    parser.add_argument("--train", type=int, help="probe training images (linear 600, head 1200)")
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--steps", type=int, default=600, help="head: training steps")
    args = parser.parse_args()
    model = load_model(args.model).float()
    processor = MiniCPMVProcessor.from_pretrained(args.model)
    if args.probe == "linear":
        scores = linear_probe(model.eval(), processor, args.train or 600, args.test)
        print(", ".join(f"{name} {accuracy:.1%}" for name, accuracy in scores.items()))
    else:
        train_shape_head(model.train(), processor, args.steps, args.train or 1200, args.test)


if __name__ == "__main__":
    main()
