"""`minicpmv generate`: one answer about one or more images, printed or as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time


def generate(model: str, prompt: str, images: list[str] | None = None, max_tokens: int = 256,
             temperature: float = 0.0, as_json: bool = False, dtype: str | None = None,
             device: str | None = None, max_slice_nums: int | None = None, system: str | None = None) -> dict:
    """Answer `prompt` about `images` with the checkpoint at `model` and print the answer.

    The user turn is built like the official chat(): the images first, then the prompt, joined
    by newlines. temperature 0 means greedy decoding (sampling arrives with the engine issue).
    With `as_json`, prints one object with `text`, `token_ids` (new tokens only) and
    `prompt_token_ids` (the full input after placeholder expansion). A timing line goes to stderr.
    """
    from ..chat import load
    from ..errors import PromptError
    from ..memory import peak_rss_mib

    if temperature != 0:
        raise PromptError("only --temperature 0 (greedy) is supported so far")
    chat_model = load(model, dtype=dtype, device=device)
    messages = [{"role": "user", "content": [{"image": path} for path in images or []] + [prompt]}]
    start = time.perf_counter()
    result = chat_model.generate(messages, max_new_tokens=max_tokens, max_slice_nums=max_slice_nums, system_prompt=system)
    total = time.perf_counter() - start
    record = {"text": result.text, "token_ids": result.token_ids, "prompt_token_ids": result.prompt_token_ids}
    print(json.dumps(record, ensure_ascii=False) if as_json else result.text, flush=True)
    peak_mib = peak_rss_mib()
    decode_rate = len(result.token_ids) / result.decode_seconds if result.decode_seconds > 0 else 0.0
    print(f"load {chat_model.load_seconds:.2f}s | prompt {len(result.prompt_token_ids)} tok, "
          f"prefill {result.prefill_seconds:.2f}s | {len(result.token_ids)} new tok, decode {decode_rate:.1f} tok/s | "
          f"total {total:.2f}s | peak RSS {peak_mib:.0f} MiB", file=sys.stderr)
    return record


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="answer a prompt about images",
                                   description=generate.__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--model", required=True, help="checkpoint folder")
    parser.add_argument("-p", "--prompt", required=True)
    parser.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    parser.add_argument("-n", "--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--max-slice-nums", type=int)
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    parser.add_argument("--json", action="store_true", help="print text, token_ids and prompt_token_ids as JSON")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    generate(args.model, args.prompt, args.image, args.max_tokens, args.temperature, args.json,
             args.dtype, args.device, args.max_slice_nums, args.system)
    return 0
