"""Official checkpoint folders in and out: config.json plus single or sharded safetensors.

The model is built on the meta device (no memory), then every parameter is assigned a tensor
read straight from the file into its own allocation, so peak memory stays near the size of the
weights. The
parameter names are the official ones (the modules mirror them), so no renaming is needed in
either direction. Anything missing, unexpected, mis-shaped or unreadable is a CheckpointError
naming the tensor or file.
"""

from __future__ import annotations

import ctypes
import gc
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from ..errors import CheckpointError, ConfigError
from ..files import staged_path, write_text_atomic
from ..versions import facts
from .config import MiniCPMVConfig
from .minicpmv import MiniCPMV
from .safetensors_reader import SafetensorsFormatError, read_header, read_tensors

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def weight_files(folder: Path, header_of=None) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (from the index when sharded).

    header_of(path) parses a file's header; a caller that reads the tensors later passes a
    caching one so each header is parsed once.
    """
    header_of = header_of or read_checkpoint_header
    if (folder / INDEX_FILE).exists():
        try:
            weight_map = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{folder / INDEX_FILE}: unreadable index ({exc})") from None
        files = {name: folder / file for name, file in weight_map.items()}
        for path in set(files.values()):
            if not path.exists():
                raise CheckpointError(f"{path}: shard listed in {INDEX_FILE} is missing")
        return files
    if (folder / SINGLE_FILE).exists():
        return {name: folder / SINGLE_FILE for name in header_of(folder / SINGLE_FILE)[0]}
    if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
        raise CheckpointError(f"{folder}: only safetensors weights are supported (found .bin/.pt files)")
    raise CheckpointError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")


def read_checkpoint_header(path: Path) -> tuple[dict, int]:
    """A weights file's (header, data offset); a CheckpointError naming the file if unreadable."""
    try:
        return read_header(path)
    except (SafetensorsFormatError, OSError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def check_vision_depth(config: MiniCPMVConfig, names) -> None:
    """The kept vision layers must match the weights: a wrong `drop_vision_last_layer` otherwise
    silently drops or ignores a layer."""
    pattern = re.compile(r"^vpm\.(?:encoder\.layers|blocks)\.(\d+)\.")
    present = {int(m.group(1)) for name in names if (m := pattern.match(name))}
    if present and len(present) != config.vision.num_layers:
        raise ConfigError(
            f"drop_vision_last_layer: config.json ({config.drop_vision_last_layer}) implies "
            f"{config.vision.num_layers} vision layers but the weights have {len(present)}"
        )


PROGRESS_MIN_BYTES = 256 << 20  # below this a load is too quick for a progress bar to help


def rename(name: str, prefixes: tuple[tuple[str, str], ...], to_official: bool) -> str:
    """A parameter name between the package's tree (vpm / resampler / llm) and the official one,
    where a version's official tree differs (versions.py checkpoint_prefixes)."""
    for ours, official in prefixes:
        source, target = (ours, official) if to_official else (official, ours)
        if name.startswith(source):
            return target + name[len(source) :]
    return name


VISION_PARTS = ("vpm.", "resampler.")
LLM_PARTS = ("llm.",)


class OpenCheckpoint:
    """A checkpoint folder opened once: the model built on the meta device, and where each of
    its tensors lives. Parts (name prefixes) are read in and released independently, which is
    what the low-memory mode needs: the vision parts and the LLM never resident together."""

    def __init__(self, path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(f"{folder}: not a folder (a MiniCPM-V checkpoint is a folder with config.json)")
        self.config = MiniCPMVConfig.from_pretrained(folder)
        self._headers: dict[Path, tuple[dict, int]] = {}
        prefixes = facts(self.config.version).checkpoint_prefixes
        stored = weight_files(folder, self._header)
        self.stored_names = {rename(name, prefixes, False): name for name in stored}  # ours -> the file's
        self.files = {ours: stored[name] for ours, name in self.stored_names.items()}
        check_vision_depth(self.config, self.files)
        with torch.device("meta"):
            self.model = MiniCPMV(self.config)
        quantization = self.config.raw.get("quantization_config")
        if quantization:
            from ..quant.apply import QuantConfig, prepare_quantized_layout

            prepare_quantized_layout(self.model, QuantConfig.from_dict(quantization))
        self.expected = {
            name: (tuple(t.shape), t.numel() * t.element_size()) for name, t in self.model.state_dict().items()
        }
        self.floating = {name: t.is_floating_point() for name, t in self.model.state_dict().items()}
        # tensors whose dtype is part of a quantized layout, not the model's compute dtype
        self.stored_dtypes = {
            f"{module_name}.{key}": dtype
            for module_name, module in self.model.named_modules()
            for key, dtype in getattr(module, "stored_dtypes", {}).items()
        }
        # what a decoded token streams goes straight into huge pages (memory.huge_page_empty)
        self.streamed = {
            f"{module_name}.{key}"
            for module_name, module in self.model.named_modules()
            for key in getattr(module, "streamed_names", ())
        }
        if self.config.llm.tie_word_embeddings:
            self.expected.pop("llm.lm_head.weight", None)
        _check_names(self.expected, self.files)
        self.dtype, self.device = dtype, device
        self.model.eval()

    def _header(self, file: Path) -> tuple[dict, int]:
        if file not in self._headers:
            self._headers[file] = read_checkpoint_header(file)
        return self._headers[file]

    def nbytes(self, parts: tuple[str, ...] = ("",)) -> int:
        """Bytes of the tensors under `parts` once loaded (in their stored dtypes)."""
        return sum(size for name, (_, size) in self.expected.items() if name.startswith(parts))

    def materialize(self, parts: tuple[str, ...] = ("",), progress: bool | None = None) -> MiniCPMV:
        """Read the tensors whose names start with one of `parts` into the model."""
        names = [name for name in self.expected if name.startswith(parts)]
        if progress is None:
            progress = self.nbytes(parts) >= PROGRESS_MIN_BYTES and sys.stderr.isatty()
        bar = tqdm(
            total=self.nbytes(parts),
            unit="B",
            unit_scale=True,
            desc="loading weights",
            disable=not progress,
            leave=False,
        )
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        state = {}
        for file, file_names in sorted(by_file.items()):
            header, data_start = self._header(file)
            ours = {self.stored_names[name]: name for name in file_names}
            try:
                huge = frozenset(stored for stored, name in ours.items() if name in self.streamed)
                for stored, tensor in read_tensors(file, list(ours), header, data_start, huge):
                    name = ours[stored]
                    dtype = self.stored_dtypes.get(name, self.dtype)
                    state[name] = _convert(
                        name, tensor, self.expected[name][0], self.floating[name], dtype, self.device
                    )
                    bar.update(self.expected[name][1])
            except (SafetensorsFormatError, OSError) as exc:
                raise CheckpointError(f"{file}: cannot read tensors ({exc})") from None
        bar.close()
        self.model.load_state_dict(state, strict=False, assign=True)
        if self.config.llm.tie_word_embeddings and type(self.model.llm.lm_head) is torch.nn.Linear:
            # (a quantized head is a copy of its own)
            self.model.llm.lm_head.weight = self.model.llm.model.embed_tokens.weight
        return self.model

    def release(self, parts: tuple[str, ...]) -> None:
        """Give the memory of `parts` back (their tensors return to the meta device)."""
        for prefix in parts:
            self.model.get_submodule(prefix.rstrip(".")).to("meta")
        gc.collect()
        _trim_heap()


def _trim_heap() -> None:
    """Freed tensors below glibc's mmap threshold stay in the heap; hand them back to the OS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def load_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: bool | None = None,
) -> MiniCPMV:
    """Build the model of a checkpoint folder and fill it with the folder's weights.

    progress: show a progress bar on stderr; by default only for large checkpoints on a terminal.
    """
    return OpenCheckpoint(path, dtype, device).materialize(progress=progress)


def _check_names(expected: dict, files: dict) -> None:
    missing = sorted(set(expected) - set(files))
    unexpected = sorted(set(files) - set(expected))
    if missing:
        raise CheckpointError(
            f"missing tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    if unexpected:
        raise CheckpointError(
            f"unexpected tensor {unexpected[0]} in {files[unexpected[0]].name}"
            + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
        )


def _convert(name: str, tensor: torch.Tensor, shape: tuple, floating: bool, dtype, device) -> torch.Tensor:
    """The stored tensor in its place: the model's shape, floating point where the model has
    floats (the compute `dtype`), integers where a quantized layout has them."""
    if tuple(tensor.shape) != shape:
        raise CheckpointError(f"tensor {name} has shape {tuple(tensor.shape)}, the config implies {shape}")
    if tensor.is_floating_point() != floating:
        raise CheckpointError(
            f"tensor {name} is stored as {str(tensor.dtype).removeprefix('torch.')}, "
            f"expected {'floating point' if floating else 'integers'}"
        )
    target = dtype if tensor.is_floating_point() else tensor.dtype
    return tensor.to(device=device, dtype=target)


def save_model(model: MiniCPMV, path: str | Path, max_shard_bytes: int = 4 << 30, state: dict | None = None) -> None:
    """Write config.json and the weights in the official layout, sharded above `max_shard_bytes`.
    `state` replaces `model.state_dict()` (e.g. the gathered weights of a sharded model).

    Each file is written to a temporary name and renamed into place, so an interrupted save
    never leaves a half-written file under an official name.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous().cpu() for name, t in (state or model.state_dict()).items()}
    if model.config.llm.tie_word_embeddings:
        state.pop("llm.lm_head.weight", None)
    prefixes = facts(model.config.version).checkpoint_prefixes
    state = {rename(name, prefixes, True): tensor for name, tensor in state.items()}
    shards = _shard(state, max_shard_bytes)
    if len(shards) == 1:
        with staged_path(folder / SINGLE_FILE) as tmp:
            save_file(shards[0], tmp, metadata={"format": "pt"})
        (folder / INDEX_FILE).unlink(missing_ok=True)
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            with staged_path(folder / name) as tmp:
                save_file(shard, tmp, metadata={"format": "pt"})
            weight_map.update({key: name for key in shard})
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
            "weight_map": dict(sorted(weight_map.items())),
        }
        write_text_atomic(folder / INDEX_FILE, json.dumps(index, indent=2))
        (folder / SINGLE_FILE).unlink(missing_ok=True)
    config = {**model.config.raw, "torch_dtype": str(model.dtype).replace("torch.", "")}
    write_text_atomic(folder / "config.json", json.dumps(config, indent=2) + "\n")


def _shard(state: dict, max_bytes: int) -> list[dict]:
    shards, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    return shards + [current]
