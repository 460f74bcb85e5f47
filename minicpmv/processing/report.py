"""A plain-data description of how one image is encoded: what `minicpmv inspect-image` prints.

The keys and values follow the per-version records of the reference slicing.json, so users can
compare any port's decisions with the official ones."""

from __future__ import annotations

from ..versions import facts
from .config import ProcessorConfig
from .placeholders import compact_placeholder, image_placeholder
from .slicing import SlicePlan


def image_report(
    plan: SlicePlan, config: ProcessorConfig, image_index: int = 0, use_image_id: bool | None = None
) -> dict:
    """Grid, overview and slice sizes, crops, tgt_sizes and placeholder of one image."""
    placeholder = image_placeholder(plan, config, image_index, use_image_id)
    report = {
        "version": config.version,
        "width": plan.size[0],
        "height": plan.size[1],
        "max_slice_nums": plan.max_slice_nums,
        "best_grid": list(plan.grid) if plan.grid else None,
        "source_size": list(plan.source_size),
        "refine_size": list(plan.refine_size) if plan.refine_size else None,
        "slice_sizes": [list(size) for size in plan.slice_sizes],
        "num_crops": plan.num_crops,
        "tgt_sizes": [list(size) for size in plan.tgt_sizes],
        "placeholder": placeholder,
        "placeholder_compact": compact_placeholder(placeholder, config.unk),
        "unk_count": placeholder.count(config.unk),
        "tokens_per_crop": [config.crop_tokens(size) for size in plan.tgt_sizes],
    }
    if facts(config.version).downsample:
        report["downsample_mode"] = config.downsample_mode
    if facts(config.version).use_image_id:
        report["image_idx"] = image_index
        report["use_image_id"] = config.use_image_id if use_image_id is None else bool(use_image_id)
    return report


def format_report(name: str, report: dict) -> str:
    """Human-readable lines for one image report."""
    lines = [
        f"{name}: {report['width']}x{report['height']} "
        f"(MiniCPM-V {report['version']}, max_slice_nums {report['max_slice_nums']})",
    ]
    overview = report["tgt_sizes"][0]
    lines.append(
        f"  overview: {report['source_size'][0]}x{report['source_size'][1]} px = {overview[0]}x{overview[1]} patches"
    )
    if report["best_grid"]:
        cols, rows = report["best_grid"]
        width, height = report["slice_sizes"][0]
        patch_rows, patch_cols = report["tgt_sizes"][1]
        refined = report["refine_size"]
        lines.append(f"  grid: {cols} cols x {rows} rows, cut from a {refined[0]}x{refined[1]} resize")
        lines.append(f"  slices: {cols * rows} x {width}x{height} px = {patch_rows}x{patch_cols} patches")
    else:
        lines.append("  grid: none (not sliced)")
    lines.append(f"  crops: {report['num_crops']}  tgt_sizes (rows, cols): {report['tgt_sizes']}")
    if "downsample_mode" in report:  # 4.6/4.7: merged patches, so each crop its own count
        counts = " + ".join(map(str, report["tokens_per_crop"]))
        lines.append(f"  image tokens: {report['unk_count']} ({counts}; {report['downsample_mode']} merging)")
    else:
        per_crop = report["unk_count"] // report["num_crops"]
        lines.append(f"  image tokens: {report['unk_count']} ({report['num_crops']} crop(s) x {per_crop} queries)")
    lines.append(f"  placeholder: {report['placeholder_compact']!r}")
    return "\n".join(lines)
