"""Slice geometry against the official decisions (slicing.json: 78 cases x versions) and
invariants over random sizes."""

import hashlib

import pytest
from conftest import slicing_records
from hypothesis import given, settings
from hypothesis import strategies as st

from minicpmv.processing import ProcessorConfig, plan_slices
from minicpmv.processing.placeholders import image_placeholder
from minicpmv.processing.report import image_report
from minicpmv.processing.slicing import candidate_grids, choose_grid, ensure_divide, find_best_resize

RECORDS = slicing_records()
COMPARED_KEYS = [
    "best_grid",
    "source_size",
    "refine_size",
    "slice_sizes",
    "num_crops",
    "tgt_sizes",
    "placeholder_compact",
    "unk_count",
    "max_slice_nums",
    "width",
    "height",
    "image_idx",
    "use_image_id",
]


def test_reference_has_78_cases_and_all_versions():
    assert len({r[0] for r in RECORDS}) == 78
    assert {r[3] for r in RECORDS} == {"2.0", "2.5", "2.6"}


def report_for(width, height, version, record):
    config = ProcessorConfig.defaults(version)
    plan = plan_slices((width, height), record["max_slice_nums"])
    return image_report(plan, config, record.get("image_idx", 0), record.get("use_image_id"))


@pytest.mark.parametrize("case_id,width,height,version,record", RECORDS, ids=[f"{r[0]}-{r[3]}" for r in RECORDS])
def test_decisions_match_official(case_id, width, height, version, record):
    report = report_for(width, height, version, record)
    for key in COMPARED_KEYS:
        if key in record:
            assert report[key] == record[key], key
    digest = hashlib.sha256(report["placeholder"].encode("utf-8")).hexdigest()
    assert digest == record["placeholder_sha256"]


def test_ensure_divide_rounds_half_to_even():
    assert ensure_divide(63, 14) == 56  # 4.5 -> 4
    assert ensure_divide(77, 14) == 84  # 5.5 -> 6
    assert ensure_divide(3, 14) == 14  # never below one patch


def test_find_best_resize_matches_spec_example():
    assert find_best_resize((640, 448)) == (532, 378)
    assert find_best_resize((1, 1), allow_upscale=True) == (448, 448)
    assert find_best_resize((100, 100)) == (98, 98)  # no upscale: only rounded to patches


def test_square_tie_prefers_one_column_two_rows():
    # [1, 2] is listed before [2, 1] and both are equally far from a square's log ratio 0.
    assert candidate_grids(9, 2)[:2] == [(1, 2), (2, 1)]
    assert choose_grid((600, 600)) == (1, 2)


def test_max_slice_nums_one_means_single_view():
    plan = plan_slices((4000, 3000), max_slice_nums=1)
    assert plan.grid is None and plan.num_crops == 1


@settings(max_examples=300, deadline=None)
@given(
    short=st.integers(1, 20_000),
    aspect=st.floats(1.0, 200.0),
    wide=st.booleans(),
    max_slice_nums=st.integers(1, 16),
    version=st.sampled_from(["2.0", "2.5", "2.6"]),
)
def test_invariants_over_random_sizes(short, aspect, wide, max_slice_nums, version):
    long = min(max(1, round(short * aspect)), 20_000)
    size = (long, short) if wide else (short, long)
    plan = plan_slices(size, max_slice_nums)
    config = ProcessorConfig.defaults(version)
    scale, patch = config.scale_resolution, config.patch_size
    assert plan.num_crops <= max_slice_nums + 1
    assert len(plan.crop_sizes) == plan.num_crops == len(plan.tgt_sizes)
    for (width, height), (rows, cols) in zip(plan.crop_sizes, plan.tgt_sizes):
        assert width % patch == 0 and height % patch == 0
        assert (rows, cols) == (height // patch, width // patch)
        # about scale² pixels: the resize targets scale², patch rounding adds at most half a patch per side
        assert width * height <= scale * scale + patch * (width + height) + patch * patch
    if plan.grid is not None:
        cols, rows = plan.grid
        assert 2 <= cols * rows <= max_slice_nums
        assert plan.refine_size == (plan.slice_size[0] * cols, plan.slice_size[1] * rows)
    placeholder = image_placeholder(plan, config)
    assert placeholder.count(config.unk) == plan.num_crops * config.query_num
    starts = placeholder.count(config.im_start) + (placeholder.count(config.slice_start) if version == "2.6" else 0)
    assert starts == plan.num_crops
