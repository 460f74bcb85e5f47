"""Our LLM and vision tower against the peers users pick instead, on the same weights, in one run.

- LLM (Qwen2-1.5B shape, seeded random weights): prefill of a 128-token prompt and greedy decoding
  of 64 tokens with a KV cache, for
  - ours fp32 vs HF transformers fp32 (Qwen2ForCausalLM holding the same tensors);
  - ours int4 (group 64: 4.5 bits per weight with float16 scale and zero) vs llama.cpp Q4_0
    (4.5 bits) and ours int8 vs llama.cpp Q8_0, through llama-cpp-python on a GGUF that the
    package's exporter writes from the same float weights (lm_head Q8_0 / int8 in both); ours
    again with the weights in ordinary 4 KB pages instead of huge pages; and our engine with the
    LLM in llama.cpp on that GGUF (`--llm-gguf`, backends/llamacpp.py).
- Vision (SigLIP-400M shape, 2.6's NaViT layout): the 10 crops of a 1344x1344 image, ours vs HF
  transformers' Idefics2 vision transformer (the architecture 2.6 copies) with the same tensors,
  plus the largest difference of the outputs.
Contenders alternate round by round; the table reports medians and ratios, and for decoding the
bytes a token reads (the linear weights as stored, or the GGUF's tensors but the embedding
table) and the rate that makes at the measured speed, to hold against the machine's bandwidth.

    pip install -e '.[bench]'
    python benchmarks/peers.py [--threads 2] [--rounds 3] [--parts fp32,int4,int8,vision] [--out docs/peers.md]
    python benchmarks/peers.py --parts vision --isa avx2   # the vision tower as on an AVX2-only CPU
    python benchmarks/peers.py --parts vision --isa avx-vnni   # ... as on an AVX2 + AVX-VNNI CPU (Alder Lake)
    PYTHONPATH=/tmp/llama-avx2/site python benchmarks/peers.py --parts int4,int8 --isa avx2  # decoding, both sides AVX2
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from decode_speed import build, run  # noqa: E402
from isa import EMULATED, HELP, emulate  # noqa: E402

PROMPT, NEW = 128, 64


def write_gguf(llm, path: Path, weight_type: str) -> Path:
    """The float LLM as a Qwen2 GGUF through the package's exporter (q4_0 / q8_0 linears, head and
    embeddings Q8_0, norms and biases float32, a byte-level placeholder vocabulary)."""
    from minicpmv.backends.gguf_export import write_gguf as write

    if not path.exists():
        write(((f"llm.{name}", t.float().numpy()) for name, t in llm.state_dict().items()), llm.cfg, path, weight_type)
    return path


def gguf_streamed_bytes(path: Path) -> int:
    """What llama.cpp reads for a decoded token: every tensor but the token embeddings (one row
    of them is looked up), the head included."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors if t.name != "token_embd.weight")


def streamed_bytes(llm) -> int:
    """What our decoded token reads: the decoder stack's and the head's linear weights as they
    are stored (quantized values, scales, zeros, biases; norms are a few KB)."""
    from minicpmv.quant.linear import NativeLinear

    total = 0
    for module in llm.modules():
        if isinstance(module, NativeLinear):
            total += sum(b.numel() * b.element_size() for b in module.buffers())
        elif isinstance(module, torch.nn.Linear):
            total += sum(p.numel() * p.element_size() for p in module.parameters())
    return total


def llama_cpp_runner(path: Path, threads: int, prompt: int = PROMPT, new: int = NEW):
    """llama.cpp on token ids: (prefill tok/s of `prompt` random ids, decode tok/s of `new` greedy tokens)."""
    from llama_cpp import Llama

    model = Llama(
        str(path), n_ctx=prompt + new + 8, n_batch=prompt, n_threads=threads, n_threads_batch=threads, verbose=False
    )

    def next_token() -> int:  # greedy, from the last position's logits, as ours does
        logits = np.ctypeslib.as_array(model._ctx.get_logits_ith(-1), shape=(model.n_vocab(),))
        return int(np.argmax(logits))

    def once():
        model.reset()
        ids = np.random.default_rng(0).integers(300, 1000, prompt).tolist()
        start = time.perf_counter()
        model.eval(ids)
        token = next_token()
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new):
            model.eval([token])
            token = next_token()
        return prompt / prefill, new / (time.perf_counter() - start)

    once.streamed = gguf_streamed_bytes(path)
    return once


def hf_runner(llm, dtype: torch.dtype = torch.float32):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = llm.cfg
    hf_cfg = Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=False,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built directly in the peer's dtype: no second float32 copy
    try:
        model = Qwen2ForCausalLM(hf_cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    model.load_state_dict({k: v.to(dtype) for k, v in llm.state_dict().items()})

    @torch.inference_mode()
    def once():
        ids = torch.randint(300, 1000, (1, PROMPT), generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        prefill = time.perf_counter() - start
        token, past = out.logits[:, -1:].argmax(-1), out.past_key_values
        start = time.perf_counter()
        for _ in range(NEW):
            out = model(token, past_key_values=past, use_cache=True)
            token, past = out.logits[:, -1:].argmax(-1), out.past_key_values
        return PROMPT / prefill, NEW / (time.perf_counter() - start)

    return once


def ours_runner(llm, streamed: int | None = None):
    def once():
        return run(llm, PROMPT, NEW)

    once.streamed = streamed_bytes(llm) if streamed is None else streamed
    return once


def ours_small_pages_runner(mode: str):
    """Ours with the streamed weights in ordinary 4 KB pages, as before huge pages (memory.py)."""
    from minicpmv.memory import HUGE_PAGES

    HUGE_PAGES["on"] = False
    try:
        llm = build("qwen2-1.5b", mode, 64)
        run(llm, 16, 4)  # binds (and tiles) every layer where its weights are
    finally:
        HUGE_PAGES["on"] = True
    return ours_runner(llm)


def ours_llama_cpp_runner(path: Path, embeddings: torch.nn.Embedding, cfg):
    """Our engine with the LLM in llama.cpp (`--llm-gguf`): our embeddings in, logits out."""
    from minicpmv.backends.llamacpp import LlamaCppLLM

    return ours_runner(LlamaCppLLM(path, embeddings, cfg, context=PROMPT + NEW + 8), gguf_streamed_bytes(path))


def alternate(contenders: dict, rounds: int) -> dict:
    """name -> (median prefill tok/s, median decode tok/s), contenders taking turns each round."""
    for once in contenders.values():
        once()  # warm-up
    results = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, once in contenders.items():
            results[name].append(once())
    return {
        name: (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
        for name, rows in results.items()
    }


def llm_table(threads: int, rounds: int, cache: Path, modes: list[str]) -> list[str]:
    """Groups of contenders that alternate: the float paths against HF transformers, each
    quantized path against llama.cpp at the same bits per weight. Models are built in an order
    that keeps at most ~16 GB resident (four float copies at once do not fit in 24 GB)."""
    bf16 = build("qwen2-1.5b", "bf16", 64) if "fp32" in modes else None
    fp32 = build("qwen2-1.5b", "fp32", 64)  # same seed, same (bf16-representable) values
    gguf_files = {q: write_gguf(fp32, cache / f"qwen2-1.5b-{q}.gguf", q.lower()) for q in ("Q4_0", "Q8_0")}
    embeddings, cfg = copy.deepcopy(fp32.model.embed_tokens), fp32.cfg
    lines = [
        "| contender | prefill tok/s | decode tok/s | decode vs the group's peer | GB read a token | GB/s decoding |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    groups = []
    if "fp32" in modes:
        groups.append(
            (
                {
                    "ours fp32": lambda: ours_runner(fp32),
                    "ours bf16 weights, fp32 arithmetic": lambda: ours_runner(bf16),
                },
                {"HF transformers fp32": lambda: hf_runner(fp32)},
            )
        )
        groups.append(
            (
                {"ours bf16 weights, fp32 arithmetic ": lambda: ours_runner(bf16)},
                {"HF transformers bf16": lambda: hf_runner(bf16_state(bf16), torch.bfloat16)},
            )
        )
    for mode, qtype in (("int4", "Q4_0"), ("int8", "Q8_0")):
        if mode in modes:  # same seed: the same weights, quantized by each contender's own scheme
            groups.append(
                (
                    {
                        f"ours {mode}": lambda mode=mode: ours_runner(build("qwen2-1.5b", mode, 64)),
                        f"ours {mode}, 4 KB pages": lambda mode=mode: ours_small_pages_runner(mode),
                        f"ours, LLM in llama.cpp ({qtype} GGUF)": lambda qtype=qtype: ours_llama_cpp_runner(
                            gguf_files[qtype], embeddings, cfg
                        ),
                    },
                    {f"llama.cpp {qtype}": lambda qtype=qtype: llama_cpp_runner(gguf_files[qtype], threads)},
                )
            )
    for index, (ours, peers) in enumerate(groups):
        if index == 1:
            fp32 = None  # float32 copies done with: room for the next groups
        contenders = {name: make() for name, make in {**ours, **peers}.items()}
        figures = alternate(contenders, rounds)
        reference = figures[next(iter(peers))][1]
        for name, (prefill, decode) in figures.items():
            ratio = f"{decode / reference:.2f}x" if name in ours else ""
            streamed = getattr(contenders[name], "streamed", None)  # HF's runners: not counted
            size = f"{streamed / 1e9:.3f} | {streamed * decode / 1e9:.1f}" if streamed else " | "
            lines.append(f"| {name.strip()} | {prefill:.1f} | {decode:.2f} | {ratio} | {size} |")
        print("\n".join(lines[-len(figures) :]), flush=True)
        del contenders, figures
    return lines


def bf16_state(llm):
    """A stand-in exposing `cfg` and a bf16 `state_dict` of our bf16-weight LLM, for hf_runner."""

    class View:
        cfg = llm.cfg

        @staticmethod
        def state_dict():
            return {name: tensor.to(torch.bfloat16) for name, tensor in llm.state_dict().items()}

    return View


def paired_vision_towers(cfg):
    """Our NaViT SigLIP with seeded random weights and HF transformers' Idefics2 vision
    transformer holding the same tensors."""
    from transformers.models.idefics2.configuration_idefics2 import Idefics2VisionConfig
    from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer

    from minicpmv.model.vision import NavitSiglip

    torch.manual_seed(0)
    ours = NavitSiglip(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.02)
    hf = Idefics2VisionTransformer(
        Idefics2VisionConfig(
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            image_size=cfg.num_positions_per_side * cfg.patch_size,
            patch_size=cfg.patch_size,
            layer_norm_eps=cfg.layer_norm_eps,
            hidden_act="gelu_pytorch_tanh",
        )
    ).eval()
    hf.load_state_dict(ours.state_dict())
    return ours, hf


def vision_table(rounds: int, isa: str) -> list[str]:
    from minicpmv.bench import ARCHITECTURES
    from minicpmv.memory import reuse_freed_memory
    from minicpmv.model.config import MiniCPMVConfig
    from minicpmv.quant.dynamic import use_dynamic_int8

    # the allocator setting load() gives our side; process-wide, so transformers runs with it too
    reuse_freed_memory()
    cfg = MiniCPMVConfig.from_dict(ARCHITECTURES["qwen2-1.5b"]).vision
    ours, hf = paired_vision_towers(cfg)
    ours_int8 = copy.deepcopy(ours)
    use_dynamic_int8(ours_int8)
    crops, side = 10, 448  # 1344x1344: 9 slices and the overview, 32x32 patches each
    images = torch.randn(crops, 3, side, side)
    patches = side // cfg.patch_size
    strips = images.reshape(crops, 3, patches, cfg.patch_size, patches, cfg.patch_size)  # (B, 3, r, p, c, p)
    strips = strips.permute(0, 1, 3, 2, 4, 5).reshape(crops, 3, cfg.patch_size, -1)  # (B, 3, p, r*c*p)
    sizes = torch.tensor([[patches, patches]] * crops)
    mask = torch.ones((crops, patches, patches), dtype=torch.bool)

    from minicpmv.devices import pick_vision_autocast, untuned_vision_dtype

    auto = untuned_vision_dtype(torch.float32, torch.device("cpu"))  # with --isa: as on such a CPU

    def ours_in(dtype, tower=ours, per_call=crops):
        @torch.inference_mode()
        def run():
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                parts = [tower(strips[i : i + per_call], sizes[i : i + per_call]) for i in range(0, crops, per_call)]
                return torch.cat(parts).float()

        return run

    def hf_in(dtype):
        model = hf if dtype == torch.float32 else copy.deepcopy(hf).to(dtype)

        @torch.inference_mode()
        def run():
            return model(pixel_values=images.to(dtype), patch_attention_mask=mask).last_hidden_state.float()

        return run

    # one crop per call, as load(vision_dtype="int8") runs it: its activations stay in cache
    int8 = ours_in(None, ours_int8, per_call=1)
    contenders = {
        f"ours, default (vision_dtype=auto: {auto} here)": int8
        if auto == "int8"
        else ours_in(pick_vision_autocast(auto, torch.float32)),
        "HF transformers fp32 (Idefics2 vision)": hf_in(torch.float32),
    }
    if auto != "int8":
        contenders["ours int8 (`--vision-dtype int8`, a crop per call)"] = int8
    if auto != "float32":
        contenders["ours fp32"] = ours_in(None)
    if isa not in EMULATED:  # emulated bf16 without native support: minutes, and nobody's choice there
        contenders["HF transformers bf16"] = hf_in(torch.bfloat16)
    outputs = {name: fn() for name, fn in contenders.items()}  # also the warm-up
    exact = outputs["HF transformers fp32 (Idefics2 vision)"]
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    peer = statistics.median(times["HF transformers fp32 (Idefics2 vision)"])
    lines = [
        "| contender | encode 10 crops ms | vs HF fp32 | max abs diff to HF fp32 | relative L2 diff |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, out in outputs.items():
        median = statistics.median(times[name])
        diff = (out - exact).abs().max().item()
        relative = ((out - exact).norm() / exact.norm()).item()
        lines.append(f"| {name} | {median * 1000:.0f} | {peer / median:.2f}x | {diff:.2e} | {relative:.2e} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="fp32,int4,int8,vision", help="LLM modes and/or vision")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "minicpmv-peers"))
    parser.add_argument("--out", help="also write the tables (markdown) to this file")
    parser.add_argument(
        "--isa",
        choices=["native", *EMULATED],
        default="native",
        help=HELP,
    )
    args = parser.parse_args()
    emulate(args.isa)
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    lines = [
        f"{time.strftime('%Y-%m-%d')}, {args.threads} threads, torch {torch.__version__} "
        f"(ATen's CPU code: {torch.backends.cpu.get_cpu_capability()}), "
        f"`python benchmarks/peers.py --threads {args.threads} --rounds {args.rounds} --parts {args.parts}"
        f"{f' --isa {args.isa}' if args.isa in EMULATED else ''}`",
        "",
    ]
    modes = [m for m in args.parts.split(",") if m in ("fp32", "int4", "int8")]
    if {"int4", "int8"} & set(modes):  # which llama.cpp build ran (see --isa)
        import llama_cpp

        lines[-1:-1] = [f"llama-cpp-python {llama_cpp.__version__} from {Path(llama_cpp.__file__).parent}"]
    if modes:
        lines += llm_table(args.threads, args.rounds, cache, modes) + [""]
    if "vision" in args.parts:
        lines += vision_table(args.rounds, args.isa) + [""]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
