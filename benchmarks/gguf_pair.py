"""Time and peak memory of llama.cpp's file pair on a real-size checkpoint (random weights):
`export-gguf --mmproj` (LLM + vision projector) and loading the pair back (`-m model.gguf
--mmproj ...`, converted once into a checkpoint folder).

    python benchmarks/gguf_pair.py [--cache-dir DIR] [--architecture 2.6] [--type q4_0]

Writes (once) a seeded random bfloat16 checkpoint shard by shard (`minicpmv.bench.
random_bf16_checkpoint`, 16 GB for 2.6); each step runs in a fresh process whose peak RSS
(VmHWM) is reported with its wall time and the largest tensor of the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from quantize_memory import largest_tensor_mib

EXPORT = """
import json, sys
from minicpmv.memory import peak_rss_mib
from minicpmv.backends.gguf_export import export_gguf
from minicpmv.backends.mmproj import export_mmproj
export_gguf(sys.argv[1], sys.argv[2], sys.argv[4])
export_mmproj(sys.argv[1], sys.argv[3], "f16")
print(json.dumps({"peak_rss_mib": peak_rss_mib()}))
"""
CONVERT = """
import json, sys
from minicpmv.memory import peak_rss_mib
from minicpmv.backends.gguf_import import gguf_folder
folder = gguf_folder(sys.argv[1], sys.argv[2])
print(json.dumps({"peak_rss_mib": peak_rss_mib(), "folder": str(folder)}))
"""


def step(code: str, *argv: str, env: dict | None = None) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default="/tmp/minicpmv-bench")
    parser.add_argument("--architecture", default="2.6")
    parser.add_argument("--type", default="q4_0", choices=["q4_0", "q8_0", "f16"])
    args = parser.parse_args()
    from minicpmv.bench import random_bf16_checkpoint

    cache = Path(args.cache_dir)
    source = random_bf16_checkpoint(args.architecture, cache / "random-init")
    out = cache / "gguf-pair"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    llm, mmproj = out / f"model-{args.type}.gguf", out / "mmproj-f16.gguf"
    exported = step(EXPORT, str(source), str(llm), str(mmproj), args.type)
    env = {**os.environ, "MINICPMV_CACHE_DIR": str(out / "cache")}
    converted = step(CONVERT, str(llm), str(mmproj), env=env)
    name, largest = largest_tensor_mib(source)
    report = {
        "architecture": args.architecture,
        "type": args.type,
        "llm_gguf_mib": round(llm.stat().st_size / 2**20),
        "mmproj_gguf_mib": round(mmproj.stat().st_size / 2**20),
        "largest_tensor": name,
        "largest_tensor_mib": round(largest),
        "export": exported,
        "convert": {k: v for k, v in converted.items() if k != "folder"},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
