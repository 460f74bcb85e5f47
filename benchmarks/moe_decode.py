"""Decode speed of 4.7's mixture-of-experts LLM: the native decode step (kernels/hybrid.c, routing
and experts in one call) against the model's own path (a Python loop over the chosen experts,
three quantized linears each), on one model, alternating round by round; with `--llama-cpp`,
also llama.cpp's `qwen35moe` (llama-cpp-python) on the same weights written by this package's
GGUF export in Q4_0 / Q8_0.

The layers have Qwen3.5-35B-A3B's shape (hidden 2048, 40 layers, 3 Gated DeltaNet layers to one
gated attention layer, 8 of the experts per token plus a shared expert, experts 512 wide) with
seeded random weights; each layer holds 64 experts instead of 256 so that the int4 model fits a
small machine (4.5 GB instead of 18). A token reads the same bytes either way: 8 experts of a
layer, wherever they lie in memory, and the float32 router's rows (64 here, 256 there: the
router is 4x smaller here, ~0.5 MB less read a layer). The vocabulary is cut to 32k (the head is
the same work on both paths). With `--llama-cpp` the DeltaNet has 32 key heads (16 in the real
model) as the GGUF export requires value heads = key heads: 8 MB more read a DeltaNet layer.

    python benchmarks/moe_decode.py [--threads 2] [--rounds 5] [--layers 40] [--experts 64] [--bits 4]
                                    [--isa avx2] [--llama-cpp] [--prefill TOKENS]

Each round: a 64-token prompt, then 64 greedy tokens per contender; medians of tok/s and of the
paired ratios against the native step. `--prefill N` times a prompt of N tokens instead: the
grouped experts (quant/moe.py, the path quantization installs) against the model's own
expert-by-expert loop and llama.cpp's prompt processing. A prompt's tokens spread over the
experts, so there the count matters: `--experts 256 --layers 8` gives the real model's rows per
expert (8 layers of 256 experts: 3.6 GB in int4).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

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


def config(layers: int, for_gguf: bool, experts: int = 64):
    from minicpmv.model.llm import LLMConfig

    types = tuple("full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers))
    shape = SHAPE | dict(num_experts=experts)
    shape |= dict(linear_key_heads=SHAPE["linear_value_heads"]) if for_gguf else {}
    return LLMConfig(num_layers=layers, layer_types=types, **shape)


def plan(cfg, bits: int) -> dict:
    """The linears quantization takes ("llm."-prefixed module name -> bits), from a meta model."""
    from minicpmv.model.llm import LanguageModel
    from minicpmv.quant import QuantConfig
    from minicpmv.quant.apply import layer_bits

    with torch.device("meta"):
        return layer_bits(Holder(LanguageModel(cfg)), QuantConfig(bits=bits, group_size=64))


def tensors(cfg):
    """(name in the package's tree, float32 weight) of every parameter, seeded, in one order:
    the same weights for both contenders. Linears N(0, 1/fan_in), a decaying recurrence (A_log
    in [-2, 0], dt_bias 0), the rest (norms, routers, embeddings, convs) N(0, 0.02^2)."""
    from minicpmv.model.llm import LanguageModel

    with torch.device("meta"):
        shapes = {name: p.shape for name, p in LanguageModel(cfg).named_parameters()}
    linears = {name.removeprefix("llm.") for name in plan(cfg, 8)}  # the same set at any bits
    generator = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        if name.endswith("A_log"):
            weight = torch.empty(shape).uniform_(-2.0, 0.0, generator=generator)
        elif name.endswith("dt_bias"):
            weight = torch.zeros(shape)
        elif name.rpartition(".")[0] in linears:
            weight = torch.randn(shape, generator=generator) / shape[1] ** 0.5
        else:
            weight = torch.randn(shape, generator=generator) * 0.02
        yield "llm." + name, weight


def build(cfg, bits: int):
    """The quantized layout made on the meta device, then filled tensor by tensor: the float
    model (18 GB at 40 layers) never exists at once."""
    from minicpmv.model.llm import LanguageModel
    from minicpmv.quant import QuantConfig
    from minicpmv.quant.apply import prepare_quantized_layout, quantize_weight

    with torch.device("meta"):
        llm = LanguageModel(cfg)
    holder, quantized = Holder(llm), plan(cfg, bits)
    prepare_quantized_layout(holder, QuantConfig(bits=bits, group_size=64))
    llm.to_empty(device="cpu")
    with torch.no_grad():
        for name, weight in tensors(cfg):
            module_name, _, kind = name.rpartition(".")
            if module_name in quantized:
                module = holder.get_submodule(module_name)
                for suffix, tensor in quantize_weight(weight, quantized[module_name], 64, streamed=True).items():
                    setattr(module, suffix, tensor)
            else:
                getattr(holder.get_submodule(module_name), kind).copy_(weight)
    return llm


def export(cfg, bits: int, path: Path) -> Path:
    """The same weights as a GGUF of llama.cpp's `qwen35moe` (Q4_0 or Q8_0 linears)."""
    from minicpmv.backends.gguf_export import write_gguf

    weights = ((name, weight.numpy()) for name, weight in tensors(cfg))
    return write_gguf(weights, cfg, path, "q4_0" if bits == 4 else "q8_0")


@torch.inference_mode()
def decode(llm, run_layers, new_tokens=64, prompt=64) -> float:
    llm.run_layers = run_layers
    embeds = llm.embed(torch.randint(0, 1000, (1, prompt), generator=torch.Generator().manual_seed(1)))
    cache = llm.new_cache(1, prompt + new_tokens)
    token = llm(embeds, cache=cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = llm(llm.embed(token), cache=cache)[:, -1].argmax(-1, keepdim=True)
    return new_tokens / (time.perf_counter() - start)


def moe_class(llm, kind: type) -> None:
    """Every MoE layer's forward: the model's own (SparseMoE) or the grouped experts (GroupedMoE)."""
    for layer in llm.model.layers:
        layer.mlp.__class__ = kind


@torch.inference_mode()
def prefill(llm, prompt: int, kind: type) -> float:
    """Prompt tokens a second: `prompt` random ids in one forward pass, up to the last logits."""
    moe_class(llm, kind)
    embeds = llm.embed(torch.randint(0, 1000, (1, prompt), generator=torch.Generator().manual_seed(1)))
    cache = llm.new_cache(1, prompt + 1)
    start = time.perf_counter()
    llm(embeds, cache=cache, last_only=True)[:, -1].argmax(-1)
    return prompt / (time.perf_counter() - start)


def contenders(args, cfg, llm) -> dict:
    """name -> a function of a round's size (prompt tokens with --prefill, else new tokens) to tok/s."""
    if args.prefill:
        from minicpmv.model.qwen35 import SparseMoE
        from minicpmv.quant.moe import GroupedMoE

        runners = {"grouped experts": lambda n: prefill(llm, n, GroupedMoE)}
        runners["the model's experts"] = lambda n: prefill(llm, n, SparseMoE)
    else:
        step, model_path = llm.run_layers, llm.run_layers.fallback
        runners = {
            "native step": lambda new: decode(llm, step, new),
            "model's path": lambda new: decode(llm, model_path, new),
        }
    if args.llama_cpp:
        from peers import llama_cpp_runner

        args.gguf_dir.mkdir(parents=True, exist_ok=True)
        path = args.gguf_dir / f"moe-{args.layers}x{args.experts}-q{args.bits}.gguf"
        if not path.exists():
            start = time.perf_counter()
            export(cfg, args.bits, path)
            print(f"GGUF written in {time.perf_counter() - start:.0f} s: {path}", flush=True)
        sizes = (args.prefill, 1) if args.prefill else (64, 64)
        llama = llama_cpp_runner(path, args.threads, *sizes)
        runners[f"llama.cpp Q{args.bits}_0"] = lambda n: llama()[0 if args.prefill else 1]
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--experts", type=int, default=64, help="routed experts a layer (the real model: 256)")
    parser.add_argument("--bits", type=int, choices=(4, 8), default=4)
    parser.add_argument("--prefill", type=int, default=0, help="time a prompt of this many tokens instead of decoding")
    parser.add_argument("--isa", choices=sorted(EMULATED), help=HELP)
    parser.add_argument("--llama-cpp", action="store_true", help="also llama.cpp's qwen35moe on the same weights")
    parser.add_argument("--gguf-dir", type=Path, default=Path(tempfile.gettempdir()) / "minicpmv-moe")
    args = parser.parse_args()
    if args.isa:
        emulate(args.isa)
    torch.set_num_threads(args.threads)
    cfg = config(args.layers, args.llama_cpp, args.experts)
    start = time.perf_counter()
    llm = build(cfg, args.bits)
    print(f"built in {time.perf_counter() - start:.0f} s", flush=True)
    runners = contenders(args, cfg, llm)
    first = next(iter(runners))
    speeds = {name: [] for name in runners}
    for r in range(args.rounds + 1):
        names = list(runners) if r % 2 else list(reversed(runners))
        for name in names:
            size = args.prefill or (8 if r == 0 else 64)
            speed = runners[name](size)
            if r:  # round 0 warms every contender up
                speeds[name].append(speed)
    what = f"prefill of {args.prefill}" if args.prefill else "decode"
    print(
        f"| int{args.bits}, {args.layers} layers of {args.experts} experts, {what} | tok/s per round | median | {first} / this (paired) |"
    )
    for name, values in speeds.items():
        ratio = statistics.median(n / v for n, v in zip(speeds[first], values))
        print(f"| {name} | {' '.join(f'{v:.2f}' for v in values)} | {statistics.median(values):.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
