"""Server throughput: N clients at once against `minicpmv serve` (a real server process per
configuration), with and without batching of waiting greedy requests (`--max-batch`), streamed
one at a time or interleaved (`--max-streams`).

    python benchmarks/serve_throughput.py MODEL [--clients 8] [--tokens 32] [--threads 2]

Each client asks a different text question and gets exactly --tokens tokens (min_tokens =
max_tokens), so every configuration does the same work. Prints a Markdown table: wall time,
generated tokens/s over all clients, median and slowest time to a client's full answer.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx


def one_client(url: str, index: int, tokens: int, stream: bool, latencies: list) -> None:
    body = {
        "messages": [{"role": "user", "content": f"Question {index}: tell me about number {index}."}],
        "max_tokens": tokens,
        "min_tokens": tokens,
        "stream": stream,
    }
    start = time.perf_counter()
    if stream:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as response:
            assert response.status_code == 200
            assert list(response.iter_lines())[-2] == "data: [DONE]"
    else:
        response = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
        assert response.status_code == 200, response.text
    latencies[index] = time.perf_counter() - start


def start_server(model: str, threads: int, flags: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "minicpmv", "serve", "-m", model, "--port", str(port), "-t", str(threads), *flags]
    )
    url = f"http://127.0.0.1:{port}"
    while True:
        assert process.poll() is None, "the server exited"
        try:
            httpx.get(url + "/health", timeout=2)
            return process, url
        except httpx.TransportError:
            time.sleep(0.2)


def run(model: str, threads: int, flags: list[str], clients: int, tokens: int, stream: bool) -> dict:
    process, url = start_server(model, threads, flags + ["--max-queue", str(clients + 1)])
    try:
        httpx.post(
            url + "/v1/chat/completions",
            timeout=600,
            json={"messages": [{"role": "user", "content": "warm up"}], "max_tokens": 2},
        )
        latencies: list = [None] * clients
        workers = [
            threading.Thread(target=one_client, args=(url, i, tokens, stream, latencies)) for i in range(clients)
        ]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        wall = time.perf_counter() - start
        batches = httpx.get(url + "/health").json()["batches"]
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {
        "wall_s": wall,
        "tokens_per_s": clients * tokens / wall,
        "median_s": statistics.median(latencies),
        "max_s": max(latencies),
        "batches": batches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rows = [
        ("plain, one at a time (--max-batch 1 --max-streams 1)", ["--max-batch", "1", "--max-streams", "1"], False),
        (
            f"plain, batched (--max-batch {args.clients})",
            ["--max-batch", str(args.clients), "--max-streams", "1"],
            False,
        ),
        ("streamed, one at a time (--max-streams 1)", ["--max-streams", "1"], True),
        ("streamed, interleaved (--max-streams 4, the default)", ["--max-streams", "4"], True),
    ]
    print(f"{args.clients} clients x {args.tokens} tokens, {args.threads} threads, {args.model}")
    print("| configuration | wall s | tokens/s (all clients) | median answer s | slowest answer s | batches |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, flags, stream in rows:
        result = run(args.model, args.threads, flags, args.clients, args.tokens, stream)
        print(
            f"| {name} | {result['wall_s']:.1f} | {result['tokens_per_s']:.1f} | {result['median_s']:.1f} | "
            f"{result['max_s']:.1f} | {result['batches']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
