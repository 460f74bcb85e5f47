"""The official int4 checkpoints (openbmb/*-int4) are bitsandbytes NF4: each quantized linear's
`X.weight` is packed 4-bit codes with its quant state beside it (`X.weight.absmax`,
`.quant_map`, `.nested_absmax`, `.nested_quant_map`, `.quant_state.bitsandbytes__nf4`: a JSON
blob with shape, blocksize and the double-quantization offset). Here they are dequantized on the
CPU with plain torch, no bitsandbytes and no GPU:

    w[i] = quant_map[code[i]] * absmax[i // blocksize]      (two codes per byte, high nibble first)
    absmax[b] = nested_quant_map[absmax_code[b]] * nested_absmax[b // nested_blocksize] + offset

(the second line only with double quantization). `quant_map` is NF4's published table of 16
values (or FP4's), stored in the file and checked against the published NF4 values.
"""

from __future__ import annotations

import json

import torch

from ..errors import CheckpointError

# bitsandbytes' NF4 code table (the quantiles of N(0, 1), normalised to [-1, 1])
NF4 = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
STATE_SUFFIXES = ("absmax", "quant_map", "nested_absmax", "nested_quant_map")
STATE_BLOB = ".quant_state.bitsandbytes__"


def is_bnb(config: dict) -> bool:
    quant = config.get("quantization_config") or {}
    return isinstance(quant, dict) and quant.get("quant_method") == "bitsandbytes"


def quant_state_names(weight_name: str, names) -> list[str]:
    """The names of a packed weight's quant-state tensors present in `names`."""
    prefix = weight_name + "."
    return [n for n in names if n.startswith(prefix)]


def is_state_tensor(name: str) -> bool:
    return name.rpartition(".")[2] in STATE_SUFFIXES or STATE_BLOB in name


def _info(state: dict[str, torch.Tensor], name: str) -> dict:
    """The JSON quant state (shape, blocksize, dtype, nested_offset, ...) stored as bytes."""
    blob = next((t for key, t in state.items() if key.startswith("quant_state.bitsandbytes__")), None)
    if blob is None:
        raise CheckpointError(f"{name}: a bitsandbytes weight without its quant_state")
    info = json.loads(bytes(blob.to(torch.uint8).tolist()).decode())
    if info.get("quant_type") not in ("nf4", "fp4"):
        raise CheckpointError(f"{name}: quant_type {info.get('quant_type')!r} is not nf4 or fp4")
    return info


def dequantize(packed: torch.Tensor, state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """One bitsandbytes 4-bit weight -> float32 of its original shape; `state` maps the suffixes
    after `name.` (absmax, quant_map, ..., quant_state.bitsandbytes__nf4) to their tensors."""
    return _dequantize(packed, state, _info(state, name), name).float()


def _dequantize(packed: torch.Tensor, state: dict[str, torch.Tensor], info: dict, name: str) -> torch.Tensor:
    """The weight in the dtype its quant state names (bfloat16 in the official files)."""
    quant_map = state["quant_map"].float()
    if info["quant_type"] == "nf4" and not torch.allclose(quant_map, torch.tensor(NF4), atol=1e-6):
        raise CheckpointError(f"{name}: its quant_map is not the NF4 table")
    absmax = state["absmax"]
    if "nested_absmax" in state:  # double quantization: the absmax values are 8-bit codes themselves
        codes = absmax.long()
        blocks = torch.arange(len(codes)) // info["nested_blocksize"]
        absmax = state["nested_quant_map"].float()[codes] * state["nested_absmax"].float()[blocks]
        absmax = absmax + info.get("nested_offset", 0.0)
    flat = packed.reshape(-1)
    codes = torch.stack([flat >> 4, flat & 0x0F], dim=-1).reshape(-1).long()  # high nibble first
    rows, cols = info["shape"]
    if codes.numel() < rows * cols:
        raise CheckpointError(f"{name}: {codes.numel()} codes for a {rows}x{cols} weight")
    codes = codes[: rows * cols]
    blocks = torch.arange(rows * cols) // info["blocksize"]
    values = quant_map[codes] * absmax.float()[blocks]
    return values.reshape(rows, cols).to(getattr(torch, info.get("dtype", "float32")))


def dequantized_tensors(folder):
    """(name, tensor) of a bitsandbytes checkpoint with every 4-bit weight dequantized to its
    stored dtype; the quant-state tensors are consumed, the rest passes as stored. `folder` is a
    quant.stream.TensorFolder: its tensors in file order, `read(names)` for the state of a weight
    (which may sit in another shard)."""
    names = list(folder.files)
    for name, tensor in folder:
        if is_state_tensor(name):
            continue
        state_names = quant_state_names(name, names)
        if not state_names:
            yield name, tensor
            continue
        state = {key[len(name) + 1 :]: value for key, value in folder.read(state_names).items()}
        yield name, _dequantize(tensor, state, _info(state, name), name)
