"""Decode speed of 4.7's mixture-of-experts LLM: the native decode step (kernels/hybrid.c, routing
and experts in one call) against the model's own path (a Python loop over the chosen experts,
three quantized linears each), on one model, alternating round by round.

The layers have Qwen3.5-35B-A3B's shape (hidden 2048, 40 layers, 3 Gated DeltaNet layers to one
gated attention layer, 8 of the experts per token plus a shared expert, experts 512 wide) with
seeded random weights; each layer holds 64 experts instead of 256 so that the int4 model fits a
small machine (4.5 GB instead of 18). A token reads the same bytes either way: 8 experts of a
layer, wherever they lie in memory, and the float32 router's rows (64 here, 256 there: the
router is 4x smaller here, ~0.5 MB less read a layer). The vocabulary is cut to 32k (the head is
the same work on both paths).

    python benchmarks/moe_decode.py [--threads 2] [--rounds 5] [--layers 40] [--bits 4] [--isa avx2]

Each round: a 64-token prompt, then 64 greedy tokens per contender; medians of tok/s and of the
paired ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from isa import EMULATED, HELP, emulate

SHAPE = dict(
    family="qwen3_5",
    hidden_size=2048,
    intermediate_size=512,
    num_heads=16,
    num_kv_heads=2,
    explicit_head_dim=256,
    attention_bias=False,
    partial_rotary_factor=0.25,
    linear_key_heads=16,
    linear_value_heads=32,
    linear_key_head_dim=128,
    linear_value_head_dim=128,
    num_experts=64,
    experts_per_token=8,
    expert_intermediate_size=512,
    shared_expert_intermediate_size=512,
    vocab_size=32000,
)


class Holder(torch.nn.Module):  # what the quantization functions take: .llm and .config.raw
    def __init__(self, llm):
        super().__init__()
        self.llm = llm
        self.config = type("Config", (), {"raw": {}})()


def build(layers: int, bits: int):
    """The quantized layout made on the meta device, then each quantized linear filled from a
    random float weight of its own: the float model (18 GB at 40 layers) never exists at once."""
    from minicpmv.model.llm import LanguageModel, LLMConfig
    from minicpmv.quant import QuantConfig
    from minicpmv.quant.apply import layer_bits, prepare_quantized_layout, quantize_weight

    types = tuple("full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers))
    cfg = LLMConfig(num_layers=layers, layer_types=types, **SHAPE)
    with torch.device("meta"):
        llm = LanguageModel(cfg)
    holder, config = Holder(llm), QuantConfig(bits=bits, group_size=64)
    plan = layer_bits(holder, config)
    prepare_quantized_layout(holder, config)
    llm.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in llm.parameters():  # norms, routers, embeddings, the DeltaNets' conv and decay
            p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        for name, bits_here in plan.items():
            module = holder.get_submodule(name)
            weight = torch.randn(module.out_features, module.in_features, generator=generator)
            weight /= module.in_features**0.5
            for suffix, tensor in quantize_weight(weight, bits_here, config.group_size, streamed=True).items():
                setattr(module, suffix, tensor)
        for layer in llm.model.layers:  # a decaying, stable recurrence
            if layer.recurrent:
                layer.linear_attn.A_log.uniform_(-2.0, 0.0, generator=generator)
                layer.linear_attn.dt_bias.zero_()
    return llm


@torch.inference_mode()
def decode(llm, prompt=64, new_tokens=64) -> float:
    embeds = llm.embed(torch.randint(0, 1000, (1, prompt), generator=torch.Generator().manual_seed(1)))
    cache = llm.new_cache(1, prompt + new_tokens)
    token = llm(embeds, cache=cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = llm(llm.embed(token), cache=cache)[:, -1].argmax(-1, keepdim=True)
    return new_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4)
    parser.add_argument("--isa", choices=sorted(EMULATED), help=HELP)
    args = parser.parse_args()
    if args.isa:
        emulate(args.isa)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    llm = build(args.layers, args.bits)
    print(f"built in {time.perf_counter() - start:.0f} s", flush=True)
    step, model_path = llm.run_layers, llm.run_layers.fallback
    speeds = {"native": [], "model": []}
    for r in range(args.rounds + 1):
        for kind in ("model", "native") if r % 2 else ("native", "model"):
            llm.run_layers = step if kind == "native" else model_path
            speed = decode(llm, new_tokens=8 if r == 0 else 64)
            if r:  # round 0 warms both up
                speeds[kind].append(speed)
    ratios = [n / m for n, m in zip(speeds["native"], speeds["model"])]
    print(f"| int{args.bits}, {args.layers} layers | tok/s per round |")
    for kind, values in speeds.items():
        print(f"| {kind} | {' '.join(f'{v:.2f}' for v in values)} (median {statistics.median(values):.2f}) |")
    print(f"| native / model, median of paired rounds | {statistics.median(ratios):.3f} |")


if __name__ == "__main__":
    main()
