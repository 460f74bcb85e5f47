"""Processor settings as a plain dataclass, built from a checkpoint's preprocessor_config.json
(2.5/2.6), processor_config.json (4.6/4.7) or config.json (2.0), with the official defaults for
anything missing."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError
from ..jsonfile import read_json_object
from ..versions import detect_version, facts, normalize_version
from .slicing import MAX_SLICE_NUMS, PATCH_SIZE, SCALE_RESOLUTION, SlicePlan, plan_slices, slice_limit, square_plan


@dataclass
class ProcessorConfig:
    """Everything the processor needs to turn images and messages into model inputs."""

    version: str = "2.6"
    query_num: int = 64
    max_slice_nums: int = MAX_SLICE_NUMS
    scale_resolution: int = SCALE_RESOLUTION
    patch_size: int = PATCH_SIZE
    use_image_id: bool = True
    norm_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    norm_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    im_start: str = "<image>"
    im_end: str = "</image>"
    slice_start: str = "<slice>"
    slice_end: str = "</slice>"
    unk: str = "<unk>"
    im_id_start: str = "<image_id>"
    im_id_end: str = "</image_id>"
    downsample_mode: str | None = None  # 4.6/4.7: "16x" or "4x" (None: the version's default)
    extra: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.version = normalize_version(self.version)
        if not facts(self.version).use_image_id:
            self.use_image_id = False  # only a schema with <image_id> tags can use them
        for name in ("query_num", "max_slice_nums", "scale_resolution", "patch_size"):
            value = getattr(self, name)
            least = 0 if name == "query_num" and facts(self.version).downsample else 1  # 4.6: no resampler
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        self.norm_mean, self.norm_std = tuple(self.norm_mean), tuple(self.norm_std)
        version_facts = facts(self.version)
        if version_facts.downsample:
            version_facts.merge_per_side(self.downsample_mode)  # a ConfigError for an unknown mode
            self.downsample_mode = self.downsample_mode or version_facts.downsample_modes[0]
        elif self.downsample_mode is not None:
            raise ConfigError(f"downsample_mode: MiniCPM-V {self.version} has none (it has a resampler)")

    @property
    def merge_per_side(self) -> int:
        """Patches per side folded into one image token (1 for the resampler versions)."""
        return facts(self.version).merge_per_side(self.downsample_mode)

    def crop_tokens(self, tgt_size: tuple[int, int]) -> int:
        """Image tokens of a crop of (rows, cols) patches (versions.VersionFacts.crop_tokens)."""
        return facts(self.version).crop_tokens(tgt_size, self.downsample_mode, self.query_num)

    def plan(self, size: tuple[int, int], max_slice_nums: int | None = None) -> SlicePlan:
        """Slice plan of an image of `size` (width, height) under these settings (1.0: one
        squashed view, whatever max_slice_nums says)."""
        limit = slice_limit(max_slice_nums, self.max_slice_nums)
        if not facts(self.version).slicing:
            return square_plan(size, self.scale_resolution, self.patch_size)
        multiple = self.patch_size * self.merge_per_side if facts(self.version).downsample else None
        return plan_slices(size, limit, self.scale_resolution, self.patch_size, multiple)

    @classmethod
    def defaults(cls, version: str = "2.6") -> ProcessorConfig:
        """The official settings of a released checkpoint of `version`."""
        version = normalize_version(version)
        version_facts = facts(version)
        return cls(
            version=version,
            query_num=version_facts.query_num,
            use_image_id=version_facts.use_image_id,
            unk=version_facts.feature_token,
        )

    @classmethod
    def from_dict(cls, data: dict, version: str) -> ProcessorConfig:
        """From preprocessor_config.json keys (image_feature_size = query_num); unknown keys kept in extra."""
        base = cls.defaults(version)
        known = {f.name for f in fields(cls)} - {"extra", "version"}
        values = {k: v for k, v in data.items() if k in known}
        if "image_feature_size" in data:
            values["query_num"] = data["image_feature_size"]
        base_values = {f.name: getattr(base, f.name) for f in fields(cls) if f.name != "extra"}
        return cls(**{**base_values, **values, "version": version})

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ProcessorConfig:
        """Settings of a checkpoint folder, checked against its config.json like the official chat()."""
        folder = Path(path)
        model_config = read_json_object(folder / "config.json")
        version = detect_version(model_config)
        pre_path = folder / "preprocessor_config.json"
        native_path = folder / "processor_config.json"  # 4.6/4.7: {"image_processor": {...}, ...}
        if native_path.exists() and not pre_path.exists():
            image_processor = read_json_object(native_path).get("image_processor") or {}
            if not isinstance(image_processor, dict):
                raise ConfigError(f"{native_path}: image_processor must be an object")
            return cls.from_dict(image_processor, version)
        if pre_path.exists():
            config = cls.from_dict(read_json_object(pre_path), version)
            _check_agreement(config, model_config)
            return config
        return cls.from_dict(_flatten_model_config(model_config), version)


def _flatten_model_config(config: dict) -> dict:
    """Processor keys from config.json (2.0 keeps them at top level, 2.5/2.6 in slice_config)."""
    values = {
        k: config[k]
        for k in ("query_num", "max_slice_nums", "scale_resolution", "patch_size", "use_image_id")
        if k in config
    }
    values.update(config.get("slice_config") or {})
    return values


def _check_agreement(config: ProcessorConfig, model_config: dict) -> None:
    """The official chat() asserts that both files agree; a mismatch means a broken checkpoint."""
    model_values = _flatten_model_config(model_config)
    for name in ("query_num", "patch_size", "max_slice_nums", "use_image_id"):
        if name in model_values and model_values[name] != getattr(config, name):
            raise ConfigError(
                f"{name}: preprocessor_config.json has {getattr(config, name)!r} "
                f"but config.json has {model_values[name]!r}"
            )
