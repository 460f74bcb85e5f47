"""Configuration search (paper §5: "automatic search for the best configuration on the target
device"): thread counts measured separately for image encoding, prefill and decoding, how
many crops go through the vision tower at once, and (if asked) whether torch.compile helps and
whether the vision tower is faster in int8. The best values are cached per machine and model;
`load()` applies them automatically on later runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import torch

from .cpu import cpu_name
from .files import cache_dir, write_text_atomic

PHASES = ("encode", "prefill", "decode")


def cache_path() -> Path:
    return cache_dir() / "tune.json"


def machine_key() -> str:
    """CPU model, core count and torch version: what the best settings depend on."""
    return f"{cpu_name()} | {os.cpu_count()} cpus | torch {torch.__version__}"


def model_key(config) -> str:
    """The shapes and quantization of a model (not its path: a copy of it tunes the same)."""
    raw = {k: v for k, v in config.raw.items() if not k.startswith("_")}
    return hashlib.sha1(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_tuning(config) -> dict | None:
    """Cached best settings for this machine and model, or None."""
    try:
        entries = json.loads(cache_path().read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return entries.get(machine_key(), {}).get(model_key(config))


def tuned_vision_dtype(config) -> str | None:
    """The vision precision ("int8" or a float dtype) `minicpmv tune` measured fastest for this
    model on this machine, where it measured the int8 tower (load() then takes it for
    vision_dtype="auto"); None otherwise."""
    return ((load_tuning(config) or {}).get("encode") or {}).get("vision_dtype")


def save_tuning(config, settings: dict) -> Path:
    """Store settings atomically (temp file, then rename); other machines' entries are kept."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        entries = {}
    entries.setdefault(machine_key(), {})[model_key(config)] = settings
    write_text_atomic(path, json.dumps(entries, indent=2))
    return path


def _median_seconds(run, repeat: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.inference_mode()
def search(
    chat,
    image,
    thread_options: list[int],
    crop_options: list[int],
    repeat: int = 3,
    prompt_tokens: int = 128,
    decode_tokens: int = 16,
    try_compile: bool = False,
    try_int8: bool = False,
) -> tuple[dict, list[dict]]:
    """Measure every option per phase; returns (best settings, table rows). With try_compile, the
    decode step and the vision tower are then compiled and measured again at their best settings;
    with try_int8 the vision tower is then turned to int8 (in place: this chat's model stays so)
    and measured at every crop count, eager, and every encoding row names its precision."""
    model = chat.model
    inputs = chat.processor([{"role": "user", "content": [{"image": image}, "Describe the image."]}])
    crops, sizes = inputs.pixel_values[0], inputs.tgt_sizes[0]
    llm = model.llm
    prompt = llm.embed(torch.randint(0, min(1000, llm.cfg.vocab_size), (1, prompt_tokens)))

    def encode(per_call):
        with torch.autocast(
            "cpu", dtype=chat.vision_autocast or torch.bfloat16, enabled=chat.vision_autocast is not None
        ):
            model.get_image_features(crops, sizes, per_call)

    def decode():
        cache = llm.new_cache(1, prompt_tokens + decode_tokens + 1)
        llm(prompt, cache=cache, last_only=True)
        start = time.perf_counter()
        token = torch.zeros((1, 1), dtype=torch.long)
        for _ in range(decode_tokens):
            llm(llm.embed(token), cache=cache)
        return time.perf_counter() - start

    def measure(phase: str, threads: int, per_call: int | None = None, compiled: bool = False) -> dict:
        torch.set_num_threads(threads)
        row = {"phase": phase, "threads": threads, "compiled": compiled}
        if phase == "encode":
            row.update(crops_per_call=per_call, ms=_median_seconds(lambda: encode(per_call), repeat) * 1000)
        elif phase == "prefill":
            row["tok_per_s"] = prompt_tokens / _median_seconds(lambda: llm(prompt, last_only=True), repeat)
        else:
            decode()
            row["tok_per_s"] = decode_tokens / statistics.median(decode() for _ in range(repeat))
        return row

    rows = []
    original = torch.get_num_threads()
    try:
        for threads in thread_options:
            rows += [measure("encode", threads, per_call) for per_call in crop_options]
            rows += [measure("prefill", threads), measure("decode", threads)]
        best = _best(rows)
        if try_compile:
            rows += _compiled_rows(chat, best, measure)
            best = _best(rows)
        if try_int8:
            floats = str(chat.vision_autocast or next(model.parameters()).dtype).removeprefix("torch.")
            int8 = _int8_rows(chat, best, crop_options, measure)
            if int8:  # the float rows named too: `auto` then takes whichever precision was fastest
                rows = [{**r, "vision_dtype": floats} if r["phase"] == "encode" else r for r in rows] + int8
                best = _best(rows)
    finally:
        torch.set_num_threads(original)
    return best, rows


def _compiled_rows(chat, best: dict, measure) -> list[dict]:
    """Compile the decode step and the vision tower, then measure them at their best settings."""
    chat.compile(("encode", "decode"))
    return [
        measure("encode", best["encode"]["threads"], best["encode"]["crops_per_call"], compiled=True),
        measure("decode", best["decode"]["threads"], compiled=True),
    ]


def _int8_rows(chat, best: dict, crop_options: list[int], measure) -> list[dict]:
    """The vision tower's linears and attention in int8 (`--vision-dtype int8`), measured at the
    best encoding thread count for every crop count; autocast off, as load() runs int8."""
    from .quant.dynamic import use_dynamic_int8

    if "encode" in chat.compiled:
        return []  # a compiled tower would keep running the float layers it traced
    use_dynamic_int8(chat.model.vpm)
    chat.images.vision_autocast = None
    rows = [measure("encode", best["encode"]["threads"], per_call) for per_call in crop_options]
    return [{**row, "vision_dtype": "int8"} for row in rows]


def _best(rows: list[dict]) -> dict:
    """The fastest row of each phase; "compile" says whether that row ran compiled, and
    "vision_dtype" (where the rows name it) the precision of the fastest encoding."""
    encode = min((r for r in rows if r["phase"] == "encode"), key=lambda r: r["ms"])
    best = {
        "encode": {
            "threads": encode["threads"],
            "crops_per_call": encode["crops_per_call"],
            "compile": encode["compiled"],
        }
    }
    if encode.get("vision_dtype"):
        best["encode"]["vision_dtype"] = encode["vision_dtype"]
    for phase in ("prefill", "decode"):
        fastest = max((r for r in rows if r["phase"] == phase), key=lambda r: r["tok_per_s"])
        best[phase] = {"threads": fastest["threads"]}
    best["decode"]["compile"] = fastest["compiled"]
    return best


def tune_model(
    model: str,
    threads: list[int] | None = None,
    crops_per_call: list[int] | None = None,
    repeat: int = 3,
    image: str | None = None,
    try_compile: bool = False,
    try_int8: bool = False,
) -> dict:
    """Load `model` eagerly, measure it (`search`) and store the best settings in the per-machine
    cache. Returns {"best", "rows", "path", "compile_seconds"}."""
    from .chat import load
    from .devices import float_vision_dtype, pick_device, pick_dtype, untuned_vision_dtype
    from .quant.quality import example_image_path

    device = pick_device(None)
    model_dtype = pick_dtype(None, device)
    # eager and in the float dtype `auto` picks untuned, whatever an earlier tuning chose; int8
    # measured too where `auto` untuned takes it, so that the tuning can only make `auto` faster
    chat = load(model, compile="off", vision_dtype=float_vision_dtype(model_dtype, device))
    try_int8 = try_int8 or untuned_vision_dtype(model_dtype, device) == "int8"
    thread_options = threads or list(range(1, (os.cpu_count() or 1) + 1))
    best, rows = search(
        chat,
        image or example_image_path(),
        thread_options,
        crops_per_call or [1, 4, 16],
        repeat,
        try_compile=try_compile,
        try_int8=try_int8,
    )
    return {
        "best": best,
        "rows": rows,
        "path": save_tuning(chat.model.config, best),
        "compile_seconds": chat.compile_seconds,
    }
