"""`minicpmv bench`: the paper's Fig. 6 deployment ablation, measured on this machine."""

from __future__ import annotations

from .options import wire


def run_bench(
    random_init: str = "qwen2-1.5b",
    rows: str | None = None,
    cache_dir: str | None = None,
    prompt_tokens: int = 64,
    new_tokens: int = 32,
    no_tune: bool = False,
) -> None:
    """The ablation rows (comma-separated `rows`, default all) on a random-weight architecture."""
    from ..bench import ROWS, bench
    from ..errors import ConfigError

    chosen = rows.split(",") if rows else None
    unknown = set(chosen or []) - set(ROWS)
    if unknown:
        raise ConfigError(f"--rows: unknown row(s) {sorted(unknown)}; choose from {list(ROWS)}")
    bench(random_init, chosen, cache_dir, prompt_tokens, new_tokens, not no_tune)


def add_parser(subparsers) -> None:
    from ..bench import ARCHITECTURES, ROWS, bench

    parser = subparsers.add_parser(
        "bench",
        help="Fig. 6 ablation: load, encode, prefill, decode, memory",
        description=bench.__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--random-init",
        choices=sorted(ARCHITECTURES),
        default="qwen2-1.5b",
        help="real-size architecture with seeded random weights (default qwen2-1.5b)",
    )
    parser.add_argument("--rows", help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--cache-dir", help="where random checkpoints are written (default ~/.cache/minicpmv)")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="text tokens besides the image")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--no-tune", action="store_true", help="use existing tuning instead of running tune first")
    wire(parser, run_bench)
