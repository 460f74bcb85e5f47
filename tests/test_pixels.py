"""Pixels of the 4 reference images equal the official float32 output bit for bit, and NaViT
position buckets equal the official float32 computation for every n listed."""

import ast
import hashlib

import pytest
import torch
from conftest import REFERENCE, load_json

from minicpmv.model.positions import navit_position_buckets, navit_position_ids
from minicpmv.processing import ProcessorConfig, encode_image, load_image, plan_slices

PIXELS = load_json(REFERENCE / "pixels" / "pixels.json")["images"]


@pytest.mark.parametrize("name", sorted(PIXELS))
@pytest.mark.parametrize("version", ["2.0", "2.5", "2.6"])
def test_crops_match_official_bytes(name, version):
    expected = PIXELS[name]
    config = ProcessorConfig.defaults(version)
    image = load_image(REFERENCE / expected["image"])
    assert list(image.size) == expected["size"]
    encoded = encode_image(image, plan_slices(image.size, config.max_slice_nums), config.norm_mean, config.norm_std)
    assert encoded.tgt_sizes.tolist() == expected["tgt_sizes"]
    assert encoded.tgt_sizes.dtype == torch.int32
    assert [list(c.shape) for c in encoded.crops] == expected["crop_shapes"]
    for crop, digest in zip(encoded.crops, expected["crop_sha256"]):
        assert crop.dtype == torch.float32
        assert hashlib.sha256(crop.numpy().tobytes()).hexdigest() == digest


def test_patch_layout_is_row_major_patches_side_by_side():
    image = load_image(REFERENCE / "images" / "img_b_640x448.png")
    plan = plan_slices(image.size)
    encoded = encode_image(image, plan)
    overview = encoded.crops[0]  # (3, 14, 14 * rows * cols)
    rows, cols = plan.tgt_sizes[0]
    from minicpmv.processing.pixels import crop_images, normalize

    chw = torch.from_numpy(normalize(crop_images(image, plan)[0]))
    r, c = 5, 7
    patch = overview[:, :, 14 * (r * cols + c) : 14 * (r * cols + c) + 14]
    assert torch.equal(patch, chw[:, 14 * r : 14 * r + 14, 14 * c : 14 * c + 14])


def navit_cases():
    buckets = load_json(REFERENCE / "navit_position_buckets.json")["buckets"]
    buckets = ast.literal_eval(buckets) if isinstance(buckets, str) else buckets
    return sorted(((int(n), b) for n, b in buckets.items()), key=lambda x: x[0])


def test_navit_buckets_match_official_for_every_n():
    cases = navit_cases()
    assert len(cases) >= 140
    for n, expected in cases:
        assert navit_position_buckets(n).tolist() == expected, n


def test_navit_buckets_differ_from_naive_floor_where_float32_rounds():
    naive = [int(i * 70 / 25) for i in range(25)]
    assert navit_position_buckets(25).tolist() != naive


def test_navit_position_ids_are_row_major_2d():
    ids = navit_position_ids(3, 4)
    rows, cols = navit_position_buckets(3), navit_position_buckets(4)
    assert ids.tolist() == [int(r) * 70 + int(c) for r in rows for c in cols]
