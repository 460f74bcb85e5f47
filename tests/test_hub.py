"""Models by name, offline: `-m owner/name` resolves from a Hugging Face cache laid out as the hub
lays it out (refs/main -> snapshots/<commit>/ -> blobs), `-m demo` is the bundled model, and an
id that is not cached is a clear error while offline. Nothing touches the network."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import TINY

pytest.importorskip("huggingface_hub")

from minicpmv import ConfigError, load  # noqa: E402
from minicpmv.cli import main  # noqa: E402
from minicpmv.hub import is_repo_id, resolve_model  # noqa: E402

REPO = "openbmb/MiniCPM-V-2_6"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A cache with the tiny 2.6 checkpoint under REPO: files as blobs, linked from the snapshot."""
    cache = tmp_path / "hub"
    repo = cache / ("models--" + REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted((TINY["2.6"] / "checkpoint").iterdir())):
        blob = repo / "blobs" / f"{i:040x}"
        shutil.copy2(path, blob)
        (snapshot / path.name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_a_cached_id_resolves_offline_and_answers_like_the_folder(hub_cache, capsys):
    assert resolve_model(REPO) == hub_cache
    by_id = load(REPO).generate([{"role": "user", "content": "hi"}], max_new_tokens=4)
    by_folder = load(TINY["2.6"] / "checkpoint").generate([{"role": "user", "content": "hi"}], max_new_tokens=4)
    assert by_id.token_ids == by_folder.token_ids
    assert main(["generate", "-m", REPO, "-p", "hi", "-n", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == by_folder.token_ids
    assert main(["info", "-m", REPO, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "2.6"


def test_an_uncached_id_offline_is_a_clear_error(hub_cache, capsys):
    with pytest.raises(ConfigError, match="not in the Hugging Face cache.*minicpmv pull openbmb/MiniCPM-V-4_5"):
        resolve_model("openbmb/MiniCPM-V-4_5")
    assert main(["generate", "-m", "openbmb/MiniCPM-V-4_5", "-p", "hi"]) == 2
    assert "not in the Hugging Face cache" in capsys.readouterr().err
    assert main(["pull", "openbmb/MiniCPM-V-4_5"]) == 2  # offline: the download is refused, one line


def test_demo_and_local_paths(tmp_path, monkeypatch):
    from minicpmv.bundled import demo_model_path

    assert resolve_model("demo") == demo_model_path()
    assert not is_repo_id(str(TINY["2.6"] / "checkpoint")) and is_repo_id(REPO)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my" / "model").mkdir(parents=True)
    assert resolve_model("my/model").resolve() == tmp_path / "my" / "model"  # an existing folder wins over an id
