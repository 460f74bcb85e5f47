"""Time to answer one image question, ours against llama.cpp's own multimodal path (mtmd), on the
same weights: image in, first token, 32 tokens out (load excluded).

    python benchmarks/time_to_answer.py [--threads 2] [--rounds 2] [--sizes 448,1344] [--json]
    PYTHONPATH=/tmp/llama-avx2/site python benchmarks/time_to_answer.py --isa avx2  # both sides as on an AVX2 CPU

The model: the 2.6 layout with the real SigLIP-400M tower and a Qwen2-1.5B-shaped LLM, seeded
random bfloat16 weights (`minicpmv.bench.random_bf16_checkpoint("qwen2-1.5b")`). Contenders:
ours in float32 and int4 (group 64; its vision in what `--vision-dtype auto` picks here: bf16
where native, else int8), int4 with the vision tower in int8 (`--vision-dtype int8`) where
`auto` is not int8 already, and llama-cpp-python's MiniCPMv26ChatHandler on the Q4_0 LLM
+ f16 projector pair that `minicpmv export-gguf --mmproj` writes from the same checkpoint. Each
answer is 32 greedy tokens (terminators banned on both sides, so every answer has the same
length); our image-feature cache is off, so every round encodes its image. Contenders alternate
within a round; medians over rounds. `--json` prints one object: contender -> seconds, and the
ratios of ours to llama.cpp's.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from isa import EMULATED, HELP, emulate  # noqa: E402

NEW_TOKENS = 32
QUESTION = "What is in the image?"
SCENE = Path(__file__).resolve().parent.parent / "minicpmv" / "assets" / "demo-scene.png"


def image_of(size: int):
    from PIL import Image

    return Image.open(SCENE).convert("RGB").resize((size, size), Image.BICUBIC)


def ours(folder: Path, threads: int, dtype: str | None = None, vision_dtype: str = "auto"):
    import torch

    from minicpmv import load

    torch.set_num_threads(threads)
    chat = load(folder, dtype=dtype, vision_dtype=vision_dtype)
    chat.feature_cache_size = 0  # every round encodes its image, as llama.cpp does

    def once(image) -> dict:
        start = time.perf_counter()
        answer = chat.generate(
            [{"role": "user", "content": [image, QUESTION]}], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS
        )
        total = time.perf_counter() - start
        assert len(answer.token_ids) == NEW_TOKENS
        return {"first_token_s": answer.first_token_seconds, "total_s": total, "image_tokens": answer.image_tokens}

    return once


def llama_cpp(llm: Path, mmproj: Path, threads: int):
    import llama_cpp
    from llama_cpp.llama_chat_format import MiniCPMv26ChatHandler

    handler = MiniCPMv26ChatHandler(clip_model_path=str(mmproj), verbose=False)
    model = llama_cpp.Llama(
        str(llm),
        chat_handler=handler,
        n_ctx=4096,
        n_batch=1024,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    banned = {model.tokenize(t.encode(), add_bos=False, special=True)[0]: -1e9 for t in ("<|im_end|>", "<|endoftext|>")}

    def once(image) -> dict:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "\n" + QUESTION}]
        start, first, count = time.perf_counter(), None, 0
        stream = model.create_chat_completion(
            messages=[{"role": "user", "content": content}],
            temperature=0,
            repeat_penalty=1.0,
            max_tokens=NEW_TOKENS,
            logit_bias=banned,
            stream=True,
        )
        for chunk in stream:
            if chunk["choices"][0]["delta"].get("content") is not None:
                first = first or time.perf_counter() - start
                count += 1
        total = time.perf_counter() - start
        # the prompt is the image's tokens plus 30 or so text tokens: the KV length tells them apart
        return {"first_token_s": first, "total_s": total, "kv_tokens": model.n_tokens, "chunks": count}

    return once


def prepare(cache: Path) -> dict[str, Path]:
    from minicpmv.backends.gguf_export import export_gguf
    from minicpmv.backends.mmproj import export_mmproj
    from minicpmv.bench import quantized_checkpoint, random_bf16_checkpoint

    source = random_bf16_checkpoint("qwen2-1.5b", cache / "random-init")
    files = {"bf16": source, "int4": quantized_checkpoint(source, 4)}
    files["gguf"], files["mmproj"] = source.parent / "model-q4_0.gguf", source.parent / "mmproj-f16.gguf"
    if not files["gguf"].exists():
        export_gguf(source, files["gguf"], "q4_0")
    if not files["mmproj"].exists():
        export_mmproj(source, files["mmproj"], "f16")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes", default="448,1344")
    parser.add_argument("--cache", default=os.path.join("/tmp", "minicpmv-tta"))
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--isa", choices=["native", *EMULATED], default="native", help=HELP)
    args = parser.parse_args()
    emulate(args.isa)
    files = prepare(Path(args.cache))
    import torch

    from minicpmv.devices import untuned_vision_dtype

    auto = untuned_vision_dtype(torch.float32, torch.device("cpu"))
    contenders = {
        "ours float32": ours(files["bf16"], args.threads, "float32"),
        f"ours int4 (vision auto: {auto})": ours(files["int4"], args.threads),
        "llama.cpp Q4_0 + f16 mmproj": llama_cpp(files["gguf"], files["mmproj"], args.threads),
    }
    if auto != "int8":
        contenders["ours int4, int8 vision"] = ours(files["int4"], args.threads, vision_dtype="int8")
    results: dict = {}
    for size in (int(s) for s in args.sizes.split(",")):
        image = image_of(size)
        for once in contenders.values():
            once(image_of(448))  # warm-up (first-call allocations, kernel build)
        runs = {name: [] for name in contenders}
        for _ in range(args.rounds):
            for name, once in contenders.items():
                runs[name].append(once(image))
                print(f"{size}: {name}: {runs[name][-1]}", file=sys.stderr)
        for name, rows in runs.items():
            results[f"{size}/{name}"] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        peer = results[f"{size}/llama.cpp Q4_0 + f16 mmproj"]
        for name in (name for name in contenders if name.startswith("ours")):
            mine = results[f"{size}/{name}"]
            results[f"{size}/{name} vs llama.cpp"] = {
                "first_token": mine["first_token_s"] / peer["first_token_s"],
                "total": mine["total_s"] / peer["total_s"],
            }
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print("| image | contender | first token s | total s (32 tokens) | vs llama.cpp (total) |")
    print("| --- | --- | --- | --- | --- |")
    for key, row in results.items():
        size, name = key.split("/", 1)
        if "vs llama.cpp" in name:
            continue
        ratio = results.get(f"{key} vs llama.cpp", {}).get("total")
        shown = f"{ratio:.2f}x" if ratio else ""
        print(f"| {size}² | {name} | {row['first_token_s']:.2f} | {row['total_s']:.2f} | {shown} |")


if __name__ == "__main__":
    main()
