"""MiniCPM-V 4.6 at real size (SigLIP-400M + window merger + Qwen3.5-0.8B, 1.3 B parameters,
seeded random bfloat16 weights), ours against transformers' own implementation on the same
weights, in one run.

    pip install -e '.[bench]'
    python benchmarks/v46_speed.py [--threads 2] [--rounds 2] [--modes 16x,4x] [--parts tta,llm] [--prompt 512]
                                   [--isa avx2] [--json]

1. Time to answer a 1344x1344 image question (image in, 32 greedy tokens out, load excluded),
   per downsample mode. Contenders: transformers float32 (MiniCPMV4_6ForConditionalGeneration,
   its own PIL image processor, the same prompt ids; its DeltaNet kernels fall back to their
   PyTorch reference on a CPU), ours float32 (vision in float32: exact parity), ours with the
   default vision precision (bfloat16 autocast where the CPU computes bf16), ours int4 (group
   64) and ours int4 with the vision linears in int8 (`--vision-dtype int8`).
2. The LLM alone: prefill of a 512-token prompt (`--prompt`) and 64 decoded tokens (tokens/s), ours float32
   and int4 against transformers float32 and llama.cpp's `qwen35` (llama-cpp-python, the same
   weights through `minicpmv export-gguf`, Q4_0 linears with a Q8_0 embedding/head as ours has
   an int8 head; random ids in, greedy out).
transformers runs in a process of its own (as its users run it: loading ours tunes its process's
allocator, minicpmv.memory.reuse_freed_memory). Each contender runs once untimed first; then they
alternate within a round; medians over rounds. The image feature cache is off. Each
answer has exactly 32 tokens on both sides (min_new_tokens). `--json` prints one object: keys
name each contender, values are seconds (or tok/s), ratios are transformers / ours.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

from isa import EMULATED, HELP, emulate

NEW_TOKENS, PROMPT, DECODE = 32, 512, 64
QUESTION = "What is in the image?"
SCENE = Path(__file__).resolve().parent.parent / "minicpmv" / "assets" / "demo-scene.png"


def image_of(size: int):
    from PIL import Image

    return Image.open(SCENE).convert("RGB").resize((size, size), Image.BICUBIC)


def messages(image):
    return [{"role": "user", "content": [image, QUESTION]}]


def ours(folder: Path, mode: str, chat=None, vision_autocast="keep", **options):
    """A runner on a new ChatModel, or on `chat` with another vision precision (one float32
    model serves two contenders: memory for the transformers side)."""
    from minicpmv import load

    chat = chat or load(folder, downsample_mode=mode, **options)
    chat.feature_cache_size = 0
    own = chat.images.vision_autocast if vision_autocast == "keep" else vision_autocast

    def once(image) -> float:
        chat.images.vision_autocast = own
        start = time.perf_counter()
        answer = chat.generate(messages(image), thinking=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
        assert len(answer.token_ids) == NEW_TOKENS
        return time.perf_counter() - start

    return once, chat


def _transformers_model(folder: str, image_token_id: int):
    import torch
    from transformers import MiniCPMV4_6ForConditionalGeneration

    model = MiniCPMV4_6ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    # the random checkpoint's byte tokenizer puts the placeholder token at an id of its own
    model.config.image_token_id = model.model.config.image_token_id = image_token_id
    return model


def _transformers_answer(model, pixels, request) -> float:
    import torch

    image, mode, input_ids, attention_mask = request
    with torch.inference_mode():
        start = time.perf_counter()
        vision = pixels(images=[image], downsample_mode=mode, return_tensors="pt")
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=vision["pixel_values"],
            target_sizes=vision["target_sizes"],
            downsample_mode=mode,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
        )
    assert out.shape[1] - input_ids.shape[1] == NEW_TOKENS
    return time.perf_counter() - start


def _serve_transformers(conn, folder: str, image_token_id: int, threads: int, prompt: int) -> None:
    """The transformers side in a process of its own: it runs as its users run it, without the
    allocator setting that loading ours applies to its process (minicpmv.memory.reuse_freed_memory;
    docs/benchmarks.md gives what transformers gets with it too)."""
    import torch
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

    torch.set_num_threads(threads)
    model, pixels = _transformers_model(folder, image_token_id), MiniCPMV4_6ImageProcessorPil()
    llm = llm_speed_transformers(model, prompt)
    while (request := conn.recv()) is not None:
        conn.send(_transformers_answer(model, pixels, request) if request != "llm" else llm())


class TransformersSide:
    """transformers float32 in a spawned process: `answer(image, mode)` times one image question
    (its own PIL image processor, the same prompt ids as ours), `llm()` the LLM alone."""

    def __init__(self, folder: Path, processor, threads: int, prompt: int = PROMPT):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.processor = processor
        token = processor.tokenizer.require_id("<|image_pad|>")
        self.process = context.Process(target=_serve_transformers, args=(child, str(folder), token, threads, prompt))
        self.process.start()

    def answer(self, image, mode: str) -> float:
        inputs = self.processor(messages(image), thinking=False)  # the same prompt ids as ours
        self.conn.send((image, mode, inputs.input_ids, inputs.attention_mask))
        return self.conn.recv()

    def llm(self) -> tuple[float, float]:
        self.conn.send("llm")
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.process.join()


def llm_speed_ours(llm, prompt: int = PROMPT):
    import torch

    from minicpmv.generation import GenerationConfig, generate

    ids = torch.randint(300, 1000, (1, prompt), generator=torch.Generator().manual_seed(0))

    def once() -> tuple[float, float]:
        with torch.inference_mode():
            embeds = llm.embed(ids)
        config = GenerationConfig(max_new_tokens=DECODE, min_new_tokens=DECODE)
        out = generate(llm, embeds, torch.ones_like(ids), config)
        return prompt / out.prefill_seconds, (DECODE - 1) / out.decode_seconds

    return once


def llm_speed_transformers(model, prompt: int = PROMPT):
    import torch

    ids = torch.randint(300, 1000, (1, prompt), generator=torch.Generator().manual_seed(0))

    @torch.inference_mode()
    def once() -> tuple[float, float]:
        start = time.perf_counter()
        first = model.generate(input_ids=ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(input_ids=ids, max_new_tokens=DECODE, min_new_tokens=DECODE, do_sample=False)
        decode = time.perf_counter() - start - prefill  # the same prefill, then DECODE - 1 steps
        assert first.shape[1] == prompt + 1
        return prompt / prefill, (DECODE - 1) / decode

    return once


def alternate(runners: dict, rounds: int, argument=None) -> dict:
    """Each runner once untimed (first-use costs: kernel builds, weight packing, oneDNN's
    primitives), then `rounds` timed rounds, contenders alternating within a round."""
    for run in runners.values():
        run(argument) if argument is not None else run()
    results = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            results[name].append(run(argument) if argument is not None else run())
            print(f"  {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    return results


def time_to_answer(source: Path, int4: Path, mode: str, image, rounds: int, threads: int) -> dict:
    runners, models = {}, {}
    runners["ours"], models["ours"] = ours(source, mode, dtype="float32")
    runners["ours float32"], _ = ours(source, mode, chat=models["ours"], vision_autocast=None)
    runners["ours int4"], _ = ours(int4, mode)
    runners["ours int4 + int8 vision"], _ = ours(int4, mode, vision_dtype="int8")
    transformers = TransformersSide(source, models["ours"].processor, threads)
    runners["transformers float32"] = lambda image: transformers.answer(image, mode)
    print(f"time to answer, {mode}:", file=sys.stderr)
    seconds = {name: statistics.median(v) for name, v in alternate(runners, rounds, image).items()}
    transformers.close()
    return {
        f"tta_{mode}": seconds,
        f"tta_{mode}_ratios": {
            name: seconds["transformers float32"] / value for name, value in seconds.items() if name.startswith("ours")
        },
        f"image_tokens_{mode}": models["ours"].generate(messages(image), max_new_tokens=1).image_tokens,
    }


def llm_alone(source: Path, int4: Path, root: Path, threads: int, rounds: int, prompt: int) -> dict:
    from peers import llama_cpp_runner

    from minicpmv import load
    from minicpmv.backends.gguf_export import export_gguf

    gguf = root / "4.6-llm-q4_0.gguf"
    if not gguf.exists():
        export_gguf(source, gguf, "q4_0")
    transformers = TransformersSide(source, load(source).processor, threads, prompt)
    runners = {
        "ours float32": llm_speed_ours(load(source, dtype="float32").model.llm, prompt),
        "ours int4": llm_speed_ours(load(int4).model.llm, prompt),
        "transformers float32": transformers.llm,
        "llama.cpp Q4_0": llama_cpp_runner(gguf, threads, prompt, DECODE - 1),
    }
    print("LLM alone:", file=sys.stderr)
    speeds = alternate(runners, rounds)
    transformers.close()
    return {
        "prefill_tok_s": {name: statistics.median(v[0] for v in runs) for name, runs in speeds.items()},
        "decode_tok_s": {name: statistics.median(v[1] for v in runs) for name, runs in speeds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="16x,4x")
    parser.add_argument("--size", type=int, default=1344)
    parser.add_argument("--cache-dir", default=None, help="where the random checkpoints go")
    parser.add_argument("--parts", default="tta,llm", help="tta (time to answer), llm (the LLM alone)")
    parser.add_argument("--prompt", type=int, default=PROMPT, help="prompt tokens of the LLM part")
    parser.add_argument("--isa", choices=sorted(EMULATED), help=HELP)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if args.isa:
        emulate(args.isa)

    import platform

    import torch

    from minicpmv.bench import quantized_checkpoint, random_bf16_checkpoint
    from minicpmv.cpu import cpu_flags
    from minicpmv.files import cache_dir

    torch.set_num_threads(args.threads)
    root = Path(args.cache_dir) if args.cache_dir else cache_dir() / "bench"
    source = random_bf16_checkpoint("4.6", root / "random-init")
    int4 = quantized_checkpoint(source, 4)
    image = image_of(args.size)
    features = [flag for flag in ("avx512_vnni", "avx512_bf16", "amx_bf16", "avx2") if flag in cpu_flags()]
    cpu = f"{platform.processor() or platform.machine()} ({', '.join(features)})"
    report = {
        "cpu": cpu,
        "isa": args.isa or "native",
        "threads": args.threads,
        "image": f"{args.size}x{args.size}",
        "rounds": args.rounds,
    }
    if "llm" in parts:
        report.update(llm_alone(source, int4, root, args.threads, args.rounds, args.prompt))
    for mode in args.modes.split(",") if "tta" in parts else []:
        report.update(time_to_answer(source, int4, mode, image, args.rounds, args.threads))
        gc.collect()
    if args.json:
        print(json.dumps(report))
        return
    print(f"MiniCPM-V 4.6 real size, random weights; {report['cpu']}, {report['isa']}, {args.threads} threads")
    for mode in args.modes.split(",") if "tta" in parts else []:
        print(f"\n{args.size}x{args.size}, {mode} ({report[f'image_tokens_{mode}']} image tokens)")
        print("| contender | time to answer | transformers / ours |\n| --- | --- | --- |")
        for name, value in report[f"tta_{mode}"].items():
            ratio = report[f"tta_{mode}_ratios"].get(name)
            print(f"| {name} | {value:.2f} s | {f'{ratio:.2f}x' if ratio else ''} |")
    print(f"\n| LLM, {args.prompt}-token prompt | prefill tok/s | decode tok/s |\n| --- | --- | --- |")
    for name in report.get("prefill_tok_s", {}):
        print(f"| {name} | {report['prefill_tok_s'][name]:.1f} | {report['decode_tok_s'][name]:.2f} |")


if __name__ == "__main__":
    main()
