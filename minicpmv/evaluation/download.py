"""Fetch a benchmark's public TSV (VLMEvalKit's published file) and check its md5. Nothing in
the harness downloads at run time; this is the one explicit step that does."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import MiniCPMVError
from ..files import staged_path
from .benchmarks import get_benchmark

CHUNK = 1 << 20


class DownloadError(MiniCPMVError, RuntimeError):
    """The file could not be fetched, or its md5 is not the published one."""


def download_benchmark(
    name: str,
    output: str | Path,
    url: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    show_progress: bool = True,
) -> Path:
    """Download NAME.tsv into `output` (atomically: a temporary file, checked, then renamed) and
    return its path. `url`/`md5` override the published ones (a mirror); a file already there
    with the right md5 is kept."""
    from tqdm import tqdm

    bench = get_benchmark(name)
    url, md5 = url or bench.url, md5 if md5 is not None else bench.md5
    if not url:
        raise DownloadError(f"{bench.name}: no public TSV is known (the demo sets come from `minicpmv synth`)")
    target = Path(output) / f"{bench.name}.tsv"
    if target.exists() and md5 and _md5(target) == md5:
        return target
    digest = hashlib.md5()
    try:
        with (
            staged_path(target) as tmp,
            open(tmp, "wb") as out,
            urllib.request.urlopen(url, timeout=timeout) as response,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=bench.name, disable=not show_progress) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if md5 and digest.hexdigest() != md5:  # raised inside: the staged file is not kept
                raise DownloadError(f"{url}: md5 {digest.hexdigest()} is not the published {md5}; file not kept")
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    return target


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
