"""Decode and prefill speed of the LLM alone on a real-size shape, float32 vs int8 vs int4.

Builds a Qwen2-1.5B-shaped LLM (the shape of the issue's llama.cpp comparison) with seeded random
(bf16-representable) weights, quantizes it with this package's scheme, and times prefill of a 128-token prompt and
greedy decoding of 64 tokens with the KV cache. Medians of 3 runs.

    python benchmarks/decode_speed.py [--threads 2] [--shape qwen2-1.5b|qwen2-0.5b] [--modes fp32,bf16,int8,int4]

`--pages` compares where the streamed weights live (bf16, int8, int4 modes): in 2 MB huge pages
(the default) and in ordinary 4 KB pages, on one model, alternating round by round; it prints
each round's decode speed and the median of the paired ratios.

`--swiglu` compares prefill (int8, int4 modes) with the MLPs' silu(gate) * up inside the up
projection's int8 GEMM (quant/swiglu.py, as quantization installs it) and the model's own MLP
(ATen's silu and multiply), on one model, alternating round by round, at 128 and 744 tokens.
`--isa avx2` runs it as on a CPU with AVX2 only (benchmarks/isa.py).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from isa import EMULATED, HELP, emulate

SHAPES = {
    "qwen2-1.5b": dict(
        hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2, vocab_size=151936
    ),
    "qwen2-0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2, vocab_size=151936
    ),
}


def build(shape: str, mode: str, group_size: int):
    from minicpmv.model.llm import LanguageModel, LLMConfig
    from minicpmv.quant import QuantConfig
    from minicpmv.quant.apply import quantize_model

    cfg = LLMConfig(family="qwen2", **SHAPES[shape])
    torch.manual_seed(0)
    with torch.no_grad():
        llm = LanguageModel(cfg)
        for p in llm.parameters():
            # bf16-representable values, as in the official bfloat16 checkpoints: then fp32 and
            # bf16 weights hold the same numbers
            p.copy_(torch.randn(p.shape).mul_(0.02).to(torch.bfloat16))
    if mode == "fp32":
        return llm

    class Holder(torch.nn.Module):  # quantize_model works on a model with .llm and .config.raw
        def __init__(self, llm):
            super().__init__()
            self.llm = llm
            self.config = type("C", (), {"raw": {}})()

    holder = Holder(llm)
    quantize_model(holder, QuantConfig(bits={"int8": 8, "int4": 4, "bf16": 16}[mode], group_size=group_size))
    return holder.llm


@torch.inference_mode()
def run(llm, prompt_len=128, new_tokens=64):
    embeds = llm.embed(torch.randint(0, 1000, (1, prompt_len)))
    cache = llm.new_cache(1, prompt_len + new_tokens)
    start = time.perf_counter()
    logits = llm(embeds, cache=cache, last_only=True)
    prefill = time.perf_counter() - start
    token = logits[:, -1].argmax(-1, keepdim=True)
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = llm(llm.embed(token), cache=cache)[:, -1].argmax(-1, keepdim=True)
    decode = time.perf_counter() - start
    return prompt_len / prefill, new_tokens / decode


def place(llm, huge: bool) -> None:
    """Every native layer's streamed weights in huge pages (huge) or in ordinary pages."""
    from minicpmv.memory import HUGE_PAGES, to_huge_pages
    from minicpmv.quant.linear import NativeLinear

    HUGE_PAGES["on"] = huge
    for module in llm.modules():
        if isinstance(module, NativeLinear):
            module._drop_caches()
            for name in module.streamed_names:
                stored = module._buffers[name]
                module._buffers[name] = to_huge_pages(stored) if huge else stored.clone()


def compare_pages(llm, rounds: int) -> None:
    speeds = {"huge": [], "4k": []}
    for r in range(rounds):
        for kind in ("huge", "4k") if r % 2 else ("4k", "huge"):
            place(llm, kind == "huge")
            run(llm, 16, 4)  # binds (and tiles) the layers again
            speeds[kind].append(run(llm)[1])
    place(llm, True)  # as built: the next mode starts with huge pages wanted again
    ratios = [h / s for h, s in zip(speeds["huge"], speeds["4k"])]
    print(f"|   decode tok/s, huge pages | {' '.join(f'{x:.2f}' for x in speeds['huge'])} |")
    print(f"|   decode tok/s, 4 KB pages | {' '.join(f'{x:.2f}' for x in speeds['4k'])} |")
    print(f"|   huge / 4 KB, median of paired rounds | {statistics.median(ratios):.3f} |", flush=True)


def compare_swiglu(llm, rounds: int) -> None:
    from minicpmv.model.blocks import MLP
    from minicpmv.quant.swiglu import SwiGLUFusedMLP

    mlps = [layer.mlp for layer in llm.model.layers]
    for length in (128, 744):
        speeds = {"fused": [], "model": []}
        for r in range(rounds):
            for kind in ("model", "fused") if r % 2 else ("fused", "model"):
                for mlp in mlps:
                    mlp.__class__ = SwiGLUFusedMLP if kind == "fused" else MLP
                speeds[kind].append(run(llm, length, 1)[0])
        ratios = [f / m for f, m in zip(speeds["fused"], speeds["model"])]
        for kind, label in (("fused", "fused SwiGLU"), ("model", "model's MLP")):
            print(f"|   {length}-token prefill tok/s, {label} | {' '.join(f'{x:.1f}' for x in speeds[kind])} |")
        print(f"|   fused / model's, median of paired rounds | {statistics.median(ratios):.3f} |", flush=True)
    for mlp in mlps:
        mlp.__class__ = SwiGLUFusedMLP


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-1.5b")
    parser.add_argument("--modes", default="fp32,bf16,int8,int4", help="bf16: bfloat16 weights, float32 arithmetic")
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--pages", type=int, default=0, metavar="ROUNDS", help="compare huge and 4 KB pages")
    parser.add_argument("--swiglu", type=int, default=0, metavar="ROUNDS", help="compare the fused SwiGLU prefill")
    parser.add_argument("--isa", choices=sorted(EMULATED), help=HELP)
    args = parser.parse_args()
    emulate(args.isa)
    torch.set_num_threads(args.threads)
    print(f"| mode | prefill tok/s | decode tok/s |  ({args.shape}, {args.threads} threads, torch {torch.__version__})")
    for mode in args.modes.split(","):
        llm = build(args.shape, mode, args.group_size)
        run(llm, 16, 4)  # warm-up
        results = [run(llm) for _ in range(3)]
        prefill = statistics.median(r[0] for r in results)
        decode = statistics.median(r[1] for r in results)
        print(f"| {mode} | {prefill:.1f} | {decode:.2f} |", flush=True)
        if args.pages and mode != "fp32":
            compare_pages(llm, args.pages)
        if args.swiglu and mode in ("int8", "int4"):
            compare_swiglu(llm, args.swiglu)
        del llm


if __name__ == "__main__":
    main()
