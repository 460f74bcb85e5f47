"""Models by name: `-m demo`, a local folder, or a Hugging Face id such as `openbmb/MiniCPM-V-2_6`
resolved through `huggingface_hub` (the `hub` extra) into its cache, as `ollama run` or
`llama-cli -hf` let users name a model. A cached id works offline; `minicpmv pull ID` (or the
first use of an id while online) downloads it.

Only what this package reads is fetched: configs, tokenizer files and safetensors weights;
never the remote code (*.py) or other weight formats.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError

# the released checkpoints, by id -> version (the int4 ones are bitsandbytes nf4)
OFFICIAL_IDS = {
    "openbmb/MiniCPM-V": "1.0",
    "openbmb/MiniCPM-V-2": "2.0",
    "openbmb/MiniCPM-Llama3-V-2_5": "2.5",
    "openbmb/MiniCPM-Llama3-V-2_5-int4": "2.5",
    "openbmb/MiniCPM-V-2_6": "2.6",
    "openbmb/MiniCPM-V-2_6-int4": "2.6",
    "openbmb/MiniCPM-V-4_5": "4.5",
    "openbmb/MiniCPM-V-4_5-int4": "4.5",
}
FILES = ["*.json", "*.jinja", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt"]  # 4.6+: chat_template.jinja
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def is_repo_id(name: str) -> bool:
    """`owner/name` that is not an existing local path."""
    return bool(_REPO_ID.match(name)) and not Path(name).exists()


def resolve_model(
    name: str | os.PathLike, revision: str | None = None, mmproj: str | os.PathLike | None = None
) -> Path:
    """The checkpoint folder a model name stands for (see the module docstring). A llama.cpp
    GGUF file (with its projector `mmproj`, by default the one *mmproj*.gguf beside it) stands
    for its conversion into a checkpoint folder in the cache (backends.gguf_import).

    Raises ConfigError naming the problem: no such folder, an id not in the cache while offline
    (HF_HUB_OFFLINE=1), huggingface_hub not installed, or a download that failed.
    """
    text = str(name)
    if text.lower().endswith(".gguf"):
        from .backends.gguf_import import gguf_folder

        return gguf_folder(text, mmproj)
    if mmproj is not None:
        raise ConfigError(f"mmproj: a projector goes with a GGUF model file, not {text}")
    if text == "demo":
        from .bundled import demo_model_path

        return demo_model_path()
    if not is_repo_id(text):
        return Path(name)  # a folder (its problems are reported by whoever opens it)
    cached = _snapshot(text, revision, local_only=True)
    if cached is not None:
        return cached
    if _offline():
        raise ConfigError(
            f"{text}: not in the Hugging Face cache and HF_HUB_OFFLINE is set; run `minicpmv pull {text}` "
            "where the network is reachable"
        )
    return _snapshot(text, revision, local_only=False)


def pull(repo_id: str, revision: str | None = None) -> Path:
    """Download (or update) a model into the hub cache; its snapshot folder."""
    if not _REPO_ID.match(repo_id):
        raise ConfigError(f"{repo_id!r} is not a Hugging Face model id (owner/name)")
    if _offline():
        raise ConfigError(f"{repo_id}: cannot download while HF_HUB_OFFLINE is set")
    return _snapshot(repo_id, revision, local_only=False)


def _offline() -> bool:
    # read now, not at import: huggingface_hub reads its environment once, when first imported
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _snapshot(repo_id: str, revision: str | None, local_only: bool) -> Path | None:
    try:
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise ConfigError(
            f"{repo_id}: naming models by Hugging Face id needs huggingface_hub: pip install 'minicpmv[hub]' "
            "(or pass a local checkpoint folder)"
        ) from None
    try:
        # the cache folder read now: huggingface_hub reads HF_HUB_CACHE once, when first imported
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=FILES,
            local_files_only=local_only,
            cache_dir=os.environ.get("HF_HUB_CACHE") or None,
        )
    except LocalEntryNotFoundError:
        if local_only:
            return None
        raise ConfigError(
            f"{repo_id}: not in the Hugging Face cache and cannot be downloaded now "
            "(offline: HF_HUB_OFFLINE is set, or no network); run `minicpmv pull "
            f"{repo_id}` where the network is reachable"
        ) from None
    except (huggingface_hub.errors.HfHubHTTPError, OSError, ValueError) as exc:
        raise ConfigError(f"{repo_id}: cannot download ({' '.join(str(exc).split())[:200]})") from None
    return Path(folder)
