"""torch.compile for the two hot paths (paper §5: "compilation on the target device"): the decode
step (the decoder stack and head for one new token) and the vision encoder.

Compiling costs tens of seconds per model and per process and pays off only on some machines and
models, so it is off unless asked for, or unless `minicpmv tune --compile` measured it faster on
this machine (then `load(compile="auto")`, the default, turns it on). The time it takes is reported.

The model stays unaware: its `run_layers` and the vision parts' `forward` are swapped for compiled
versions here. Quantized layers enter the graph as one opaque op each (quant.linear.opaque_linear).
"""

from __future__ import annotations

import time

import torch

from .errors import ConfigError

PARTS = ("encode", "decode")


def compile_parts(option, tuning: dict | None) -> tuple[str, ...]:
    """Which parts to compile: option True/"on" (both), False/"off" (none), "auto" (those `minicpmv
    tune --compile` found faster here), or a comma-separated subset of "encode,decode"."""
    if option in (None, "auto"):
        return tuple(part for part in PARTS if (tuning or {}).get(part, {}).get("compile"))
    if option in (True, "on", "all"):
        return PARTS
    if option in (False, "off", "none", ""):
        return ()
    parts = tuple(p.strip() for p in str(option).split(","))
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ConfigError(f"compile: {option!r}; expected auto, on, off or a subset of {','.join(PARTS)}")
    return parts


def _prepare_quantized_layers(module: torch.nn.Module) -> None:
    from .quant.linear import NativeLinear

    for layer in module.modules():
        if isinstance(layer, NativeLinear):
            layer.prepare_for_compile()


def compile_decode(llm) -> None:
    """One graph for one conversation's new token (the decode step); prefill and batches keep
    the eager path, so a prompt of a new length never triggers a recompilation."""
    from .quant.decode_step import NativeStep

    _prepare_quantized_layers(llm)
    # a quantized LLM's native decode step stays in front (one native call, faster than a graph
    # of ~200 opaque linears); what it does not take reaches the compiled step
    native_step = llm.run_layers if isinstance(llm.run_layers, NativeStep) else None
    eager = native_step.fallback if native_step else llm.run_layers
    compiled = torch.compile(eager, dynamic=True)

    def run_layers(x, cos, sin, mask, cache, last_only, keep=None):
        if mask is None and keep is None and x.shape[:2] == (1, 1) and cache is not None:
            return compiled(x, cos, sin, mask, cache, last_only)
        return eager(x, cos, sin, mask, cache, last_only, keep)

    if native_step:
        native_step.fallback = run_layers
    else:
        llm.run_layers = run_layers


def compile_vision(model) -> None:
    """The vision tower's transformer layers, with dynamic shapes: crops of any size and count
    share one graph, and all layers share it too (same code, parameters as inputs), so it compiles
    once. Position ids and the resampler stay eager: they loop over crops in Python, which would
    make a new graph per crop count."""
    _prepare_quantized_layers(model.vpm)
    layers = model.vpm.encoder.layers if hasattr(model.vpm, "encoder") else model.vpm.blocks
    for layer in layers:
        layer.compile(dynamic=True)


@torch.inference_mode()
def warm_up_decode(llm, steps: int = 3) -> float:
    """Seconds to compile the decode step: a few steps on a scratch cache (the first ones compile)."""
    start = time.perf_counter()
    cache = llm.new_cache(1, 2 + steps + 1)  # never full, like the engine's: no special case compiled
    llm(
        llm.embed(torch.zeros((1, 2), dtype=torch.long, device=llm.model.embed_tokens.weight.device)),
        cache=cache,
        last_only=True,
    )
    token = torch.zeros((1, 1), dtype=torch.long, device=cache.keys[0].device)
    for _ in range(steps):
        llm(llm.embed(token), cache=cache)
    return time.perf_counter() - start
