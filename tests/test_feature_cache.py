"""Image features cached across steps when the vision parts are frozen: the same training as
without the cache, each image encoded once, refused when the vision parts train."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("yaml")

from conftest import TINY  # noqa: E402
from training_data import make_dataset  # noqa: E402

import minicpmv  # noqa: E402
from minicpmv.model.checkpoint import load_model  # noqa: E402
from minicpmv.processing.processor import MiniCPMVProcessor  # noqa: E402
from minicpmv.training.data import ChatDataset, SampleBuilder  # noqa: E402
from minicpmv.training.feature_cache import FeatureCache  # noqa: E402
from minicpmv.training.recipes import recipe  # noqa: E402
from minicpmv.training.run import run_training  # noqa: E402


@pytest.fixture(scope="module")
def asked_twice(tmp_path_factory):
    """Every record twice (another id): two records per image, as a page asked two questions."""
    path = make_dataset(tmp_path_factory.mktemp("cache-data"), count=8)
    records = json.loads(path.read_text())
    path.write_text(json.dumps(records + [{**r, "id": r["id"] + "-again"} for r in records]))
    return path


@pytest.mark.parametrize("packing", [False, pytest.param(True, marks=pytest.mark.slow)])  # faster: [False]
def test_cached_features_train_exactly_as_pixels_do(asked_twice, tmp_path, packing):
    settings = {
        "train": ["llm"],
        "max_steps": 3,
        "batch_size": 4,
        "max_length": 1024,
        "learning_rate": 1e-3,
        "precision": "float32",
        "packing": packing,
    }
    results = {}
    for cached in (False, True):
        chosen = recipe("sft", {**settings, "cache_image_features": cached})
        results[cached] = run_training(
            chosen, TINY["2.6"] / "checkpoint", asked_twice, tmp_path / str(cached), progress=False
        )
    losses = [[step["loss"] for step in results[c]["history"]] for c in (False, True)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    plain, cached = (load_model(results[c]["checkpoint"]).state_dict() for c in (False, True))
    # features encoded per image rather than per batch differ in the last bits; Adam's first steps
    # (update ~ lr * sign) carry that into ~1e-5 of a weight
    assert all(torch.allclose(plain[name], cached[name], atol=1e-4) for name in plain)
    assert not torch.equal(
        plain["llm.lm_head.weight"], load_model(TINY["2.6"] / "checkpoint").state_dict()["llm.lm_head.weight"]
    )


def test_each_image_is_encoded_once(asked_twice):
    model = load_model(TINY["2.6"] / "checkpoint")
    dataset = ChatDataset(asked_twice, SampleBuilder(MiniCPMVProcessor.from_pretrained(TINY["2.6"] / "checkpoint")))
    encoded = []
    original = model.get_image_features
    model.get_image_features = lambda crops, sizes: encoded.append(len(crops)) or original(crops, sizes)
    cache = FeatureCache(model, dataset)
    half = len(dataset) // 2
    first = [cache[i] for i in range(len(dataset))]
    again = [cache[i] for i in range(len(dataset))]
    with_images = [i for i in range(half) if first[i].images]
    assert len(encoded) == len(with_images)  # the second record of each image reuses the first's features
    for i in with_images:
        assert first[i + half].image_features is first[i].image_features
        assert all(not image.crops for image in first[i].images)  # no pixels kept
        assert first[i].image_features.shape[0] == sum(len(image.crops) for image in dataset[i].images)
    assert all(a is b for a, b in zip(first, again))


def test_cache_refused_while_the_vision_parts_train():
    with pytest.raises(minicpmv.ConfigError, match="cache_image_features needs the vision encoder and resampler"):
        recipe("sft", {"cache_image_features": True})
    assert recipe("sft", {"cache_image_features": True, "train": ["llm"]}).cache_image_features
