"""Read safetensors files straight into freshly allocated tensors.

safetensors' own loader returns views into a memory map, where a tensor starts wherever the
previous one ended: often not 64-byte aligned. torch's fused int8 CPU kernel crashes on such
memory, so we read each tensor with `readinto` into its own allocation (aligned, no extra
copy: peak memory stays at the size of the weights). The format is a little-endian u64 header
length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the data.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

from ..memory import huge_page_empty

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 << 20


class SafetensorsFormatError(ValueError):
    pass


def read_header(path: Path) -> tuple[dict, int]:
    """({name: entry}, offset of the data section); checks that every tensor lies inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise SafetensorsFormatError("file shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise SafetensorsFormatError(f"header length {header_len} does not fit in a {size}-byte file")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SafetensorsFormatError(f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SafetensorsFormatError("header is not a JSON object")
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    for name, entry in header.items():
        _check_entry(name, entry, size - data_start)
    return header, data_start


def _check_entry(name: str, entry, data_bytes: int) -> None:
    """A header entry that describes a tensor inside the data section, its byte count equal to
    its shape times its element size (checked in integers: a huge shape never reaches torch)."""
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPES:
        raise SafetensorsFormatError(f"tensor {name}: no supported dtype in {str(entry)[:80]}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise SafetensorsFormatError(f"tensor {name}: shape {str(shape)[:80]} is not a list of sizes >= 0")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise SafetensorsFormatError(f"tensor {name}: data_offsets {str(offsets)[:80]} are not [begin, end]")
    if offsets[1] > data_bytes:
        raise SafetensorsFormatError(
            f"tensor {name} ends at byte {offsets[1]} of the data, past its end ({data_bytes})"
        )
    expected = math.prod(shape) * torch.empty((), dtype=DTYPES[entry["dtype"]]).element_size()
    if offsets[1] - offsets[0] != expected:
        raise SafetensorsFormatError(f"tensor {name}: {offsets[1] - offsets[0]} bytes for shape {shape}")


def read_tensors(path: Path, names: list[str], header: dict, data_start: int, huge: frozenset[str] = frozenset()):
    """Yield (name, tensor) for `names`, each read into its own allocation: in huge pages for the
    names in `huge` (memory.huge_page_empty: the weights a decoded token streams)."""
    with open(path, "rb", buffering=0) as f:
        for name in names:
            entry = header[name]
            begin, end = entry["data_offsets"]
            allocate = huge_page_empty if name in huge else torch.empty
            tensor = allocate(tuple(entry["shape"]), dtype=DTYPES[entry["dtype"]])
            if end - begin != tensor.numel() * tensor.element_size():
                raise SafetensorsFormatError(f"tensor {name}: {end - begin} bytes for shape {entry['shape']}")
            if tensor.numel():
                f.seek(data_start + begin)
                _read_exactly(f, memoryview(tensor.view(-1).view(torch.uint8).numpy()), name)
            yield name, tensor


def _read_exactly(f, view: memoryview, name: str) -> None:
    done = 0
    while done < len(view):
        count = f.readinto(view[done:])
        if not count:
            raise SafetensorsFormatError(f"tensor {name}: file ends early")
        done += count


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """A safetensors file written straight from the tensors' memory: no serialized copy of the
    data is built first (safetensors' save_file makes one: a shard's size more of peak memory)."""
    names = {dtype: name for name, dtype in DTYPES.items()}
    header, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": names[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header["__metadata__"] = metadata or {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                f.write(memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy()))
