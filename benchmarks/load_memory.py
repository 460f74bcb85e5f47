"""Peak memory of loading a checkpoint: is it near the size of the weights?

Writes (once) a seeded random checkpoint in the official 2.6 layout: the real SigLIP-400M vision
tower and a Qwen2-1.5B-wide LLM cut to a few layers, about 2.8 GB in float32. Then, in a fresh
process, loads it with `minicpmv.model.checkpoint.load_model`, touches every weight (so that
memory-mapped pages are really resident), and reports peak RSS against the weights' size.

    python benchmarks/load_memory.py [--folder /tmp/minicpmv-bench-2.8gb] [--llm-layers 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def write_random_checkpoint(folder: Path, llm_layers: int) -> None:
    import torch
    from safetensors.torch import save_file

    from minicpmv.model.config import MiniCPMVConfig
    from minicpmv.model.minicpmv import MiniCPMV

    config = {
        "model_type": "minicpmv", "version": 2.6, "architectures": ["MiniCPMV"], "hidden_size": 1536,
        "intermediate_size": 8960, "num_hidden_layers": llm_layers, "num_attention_heads": 12,
        "num_key_value_heads": 2, "vocab_size": 32000, "query_num": 64, "drop_vision_last_layer": False,
        "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                          "num_attention_heads": 16, "patch_size": 14, "image_size": 980},
    }
    with torch.device("meta"):
        model = MiniCPMV(MiniCPMVConfig.from_dict(config))
    generator = torch.Generator().manual_seed(0)
    tensors = {name: torch.randn(t.shape, generator=generator) * 0.02 for name, t in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def measure(folder: str) -> None:
    """Runs in a fresh process: prints one JSON line."""
    import torch

    from minicpmv.memory import peak_rss_mib

    baseline_mib = peak_rss_mib()  # python + torch
    from minicpmv.model.checkpoint import load_model

    start = time.perf_counter()
    model = load_model(folder)
    load_seconds = time.perf_counter() - start
    with torch.no_grad():
        checksum = sum(float(p.float().sum()) for p in model.parameters())  # page every weight in
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peak_mib = peak_rss_mib()
    print(json.dumps({"weights_mib": weights_bytes / 2**20, "peak_rss_mib": peak_mib, "baseline_rss_mib": baseline_mib,
                      "load_seconds": load_seconds, "checksum_finite": checksum == checksum}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="/tmp/minicpmv-bench-2.8gb")
    parser.add_argument("--llm-layers", type=int, default=4)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.folder)
    folder = Path(args.folder)
    if not (folder / "model.safetensors").exists():
        write_random_checkpoint(folder, args.llm_layers)
    out = subprocess.run([sys.executable, __file__, "--measure", "--folder", str(folder)],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    ratio = result["peak_rss_mib"] / result["weights_mib"]
    print(f"weights {result['weights_mib']:.0f} MiB | peak RSS {result['peak_rss_mib']:.0f} MiB "
          f"(python+torch alone {result['baseline_rss_mib']:.0f} MiB) | ratio {ratio:.3f} | "
          f"load {result['load_seconds']:.2f}s")


if __name__ == "__main__":
    main()
