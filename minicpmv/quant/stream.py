"""Quantize a checkpoint folder tensor by tensor: read one tensor, quantize it if its linear is in
the plan, hand it to a shard writer that writes a shard file whenever it holds `shard_bytes`.
Memory stays at about one shard plus the largest tensor (in float32 while it is quantized),
whatever the model's size: the real 8B 2.6 quantizes on a 24 GB machine. Tensors that are not
quantized keep their stored dtype (a bfloat16 checkpoint's norms and embeddings stay bfloat16).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..files import write_text_atomic
from ..jsonfile import read_json_object
from ..model.checkpoint import INDEX_FILE, SINGLE_FILE, read_checkpoint_header, rename, weight_files
from ..model.config import MiniCPMVConfig
from ..model.minicpmv import MiniCPMV
from ..model.safetensors_reader import read_tensors, write_tensors
from ..versions import facts
from .apply import ROWS_PER_STEP, QuantConfig, layer_bits, quantize_weight
from .bnb import dequantized_tensors, is_bnb, is_state_tensor

SHARD_BYTES = 512 << 20


class ShardWriter:
    """Tensors in, safetensors shards out (official names and index), one shard in memory."""

    def __init__(self, folder: Path, shard_bytes: int = SHARD_BYTES):
        self.folder, self.shard_bytes = Path(folder), shard_bytes
        self.current: dict[str, torch.Tensor] = {}
        self.size = 0
        self.parts: list[tuple[Path, list[str]]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.current and self.size + nbytes > self.shard_bytes:
            self._flush()
        self.current[name] = tensor.contiguous()
        self.size += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        path = self.folder / f".part-{len(self.parts):05d}.safetensors"
        write_tensors(path, self.current)
        self.parts.append((path, list(self.current)))
        self.current, self.size = {}, 0

    def close(self) -> None:
        """The last shard, then the official names: one model.safetensors, or numbered shards and
        their index."""
        if self.current or not self.parts:
            self._flush()
        if len(self.parts) == 1:
            self.parts[0][0].rename(self.folder / SINGLE_FILE)
            return
        weight_map = {}
        for i, (path, names) in enumerate(self.parts, 1):
            final = f"model-{i:05d}-of-{len(self.parts):05d}.safetensors"
            path.rename(self.folder / final)
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        write_text_atomic(self.folder / INDEX_FILE, json.dumps(index, indent=2))


class TensorFolder:
    """A checkpoint folder's tensors in their stored dtypes, each file's header parsed once:
    iterate for all of them (file by file, in file order), `read(names)` for chosen ones."""

    def __init__(self, folder: Path):
        self._headers: dict[Path, tuple[dict, int]] = {}
        self.files = weight_files(Path(folder), self._header)  # name -> file

    def _header(self, path: Path) -> tuple[dict, int]:
        if path not in self._headers:
            self._headers[path] = read_checkpoint_header(path)
        return self._headers[path]

    def _by_file(self, names) -> dict[Path, list[str]]:
        grouped: dict[Path, list[str]] = {}
        for name in names:
            grouped.setdefault(self.files[name], []).append(name)
        return grouped

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for path, names in self._by_file(self.files).items():
            header, data_start = self._header(path)
            names.sort(key=lambda n: header[n]["data_offsets"][0])  # sequential reads
            yield from read_tensors(path, names, header, data_start)

    def read(self, names: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for path, wanted in self._by_file(names).items():
            out.update(read_tensors(path, wanted, *self._header(path)))
        return out


def quantized(name: str, tensor: torch.Tensor, plan: dict[str, int], group_size: int) -> dict[str, torch.Tensor]:
    """The output tensors standing for one source tensor (apply.quantize_model's layout)."""
    module, _, leaf = name.rpartition(".")
    bits = plan.get(module)
    if bits is None:
        return {name: tensor}
    if leaf == "bias":
        return {name: tensor.float()}
    pieces = quantize_weight(tensor, bits, group_size, ROWS_PER_STEP)
    return {f"{module}.{suffix}": piece for suffix, piece in pieces.items()}


def quantize_folder(source: Path, stage: Path, config: QuantConfig, progress: bool | None = None) -> dict:
    """Write `source` quantized by `config` into `stage`: weights and config.json; the config dict."""
    from tqdm import tqdm

    raw_config = read_json_object(source / "config.json")
    bnb = is_bnb(raw_config)  # the official int4 files: dequantized on the way in
    model_config = MiniCPMVConfig.from_dict({k: v for k, v in raw_config.items() if k != "quantization_config"})
    with torch.device("meta"):
        model = MiniCPMV(model_config)
    plan = layer_bits(model, config)
    expected = set(model.state_dict())
    if model_config.llm.tie_word_embeddings:
        expected.discard("llm.lm_head.weight")
    source_files = TensorFolder(source)
    prefixes = facts(model_config.version).checkpoint_prefixes  # 4.6/4.7: official names differ from ours

    def ours(name: str) -> str:
        return rename(name, prefixes, to_official=False)

    files = {ours(name) for name in source_files.files if not (bnb and is_state_tensor(name))}
    if files != expected:
        missing, extra = sorted(expected - set(files)), sorted(set(files) - expected)
        raise CheckpointError(
            f"{source}: the weights do not match the config (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    writer = ShardWriter(stage)
    bar = tqdm(total=len(files), desc="quantize", unit="tensor", disable=False if progress else None)
    tensors = dequantized_tensors(source_files) if bnb else source_files
    tied_head = model_config.llm.tie_word_embeddings and "llm.lm_head" in plan
    for name, tensor in tensors:
        copies = [ours(name)]
        if tied_head and ours(name) == "llm.model.embed_tokens.weight":
            copies.append("llm.lm_head.weight")  # the tied head's quantized copy (apply.layer_bits)
        for source_name in copies:
            for out_name, out in quantized(source_name, tensor, plan, config.group_size).items():
                writer.add(rename(out_name, prefixes, to_official=True), out)
        bar.update()
    bar.close()
    writer.close()
    raw = {**model_config.raw, "quantization_config": config.to_dict()}
    write_text_atomic(stage / "config.json", json.dumps(raw, indent=2) + "\n")
    return raw
