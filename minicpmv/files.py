"""Writes that a kill cannot leave half done, and what a killed one left behind cleared away.

Every output is built under a staging name beside its target (`.NAME.staging-XXXX`), fsynced, and
renamed into place in one step, so a reader sees the old whole file or the new whole file. A folder
that replaces another moves the old one aside to `.NAME.replaced` first (a folder cannot be renamed
over a non-empty one); `recover` puts it back when a kill came before its replacement arrived, so a
pointer to it (a training run's `latest`) never names a missing folder for longer than a restart.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError


def cache_dir() -> Path:
    """The per-user cache: $MINICPMV_CACHE_DIR, else $XDG_CACHE_HOME/minicpmv, else ~/.cache/minicpmv
    (tuning results, converted checkpoints, the chat history, benchmark checkpoints)."""
    root = os.environ.get("MINICPMV_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "minicpmv"


STAGING = ".staging-"
REPLACED = ".replaced"
# what older versions left: `.checkpoint-000008.abc123/`, `.latest.xyz`, `.metrics.tsv.tmp.png`
_LEGACY = re.compile(r"^\.(checkpoint-\d+\.\w+|latest\.\w+|.+\.tmp(\.\w+)?)$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it, which races with threads


def fsync(path: str | Path) -> None:
    """Flush a file or a folder's entries to the disk; a no-op where the platform cannot."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # e.g. folders on Windows, some network file systems
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            fsync(os.path.join(folder, name))
        fsync(folder)


def _prepare_parent(target: Path) -> None:
    """The target's folder, created if missing; a one-line OutputError if it cannot be."""
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{target}: {parent} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{target}: cannot create {parent} ({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{target}: {parent} is not writable")


@contextmanager
def staged_path(target: str | Path, suffix: str = ""):
    """A temporary path beside `target` to write to (keeping `suffix` for writers that look at the
    extension); when the block ends it is fsynced, given the usual permissions and renamed over
    `target`; on an error `target` is untouched and the temporary file removed."""
    target = Path(target)
    _prepare_parent(target)
    if target.is_dir() and not target.is_symlink():
        raise OutputError(f"{target}: is a folder, expected a file name")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}{STAGING}", suffix=suffix, dir=target.parent)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp's 0600 would hide the file from the user's group
        os.replace(tmp, target)
        fsync(target.parent)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a staged file."""
    with staged_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def staged_folder(target: str | Path):
    """An empty folder beside `target` to fill; when the block ends it becomes `target` (an existing
    one moved aside, then removed); on an error it is removed and `target` is untouched."""
    target = Path(target)
    _prepare_parent(target)
    if target.exists() and not target.is_dir():
        raise OutputError(f"{target}: is a file, expected a folder")
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING}", dir=target.parent))
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    try:
        os.chmod(stage, 0o777 & ~UMASK)  # mkdtemp's 0700 would hide a checkpoint from the group
        yield stage
        fsync_tree(stage)
        _swap_in(stage, target)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_output_folder(output: str | Path, force: bool, inputs: dict) -> Path:
    """`output` as a folder a command may replace: not a file, not one of `inputs` (name -> path)
    nor holding one (the swap would delete it), and empty unless `force`. OutputError otherwise."""
    output = Path(output)
    where = output.resolve()
    for name, path in inputs.items():
        source = Path(path).resolve()
        if source == where or source.is_relative_to(where):
            raise OutputError(f"{output}: is or holds {name} ({path}); write to another folder")
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: is a file, expected a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise OutputError(f"{output}: folder exists and is not empty (use --force to replace it)")
    return output


def _swap_in(stage: Path, target: Path) -> None:
    aside = target.with_name(f".{target.name}{REPLACED}")
    if target.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(target, aside)
    os.replace(stage, target)
    fsync(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


def restore_aside(target: Path) -> bool:
    """Put back a folder that a killed replacement left moved aside; False if there is none.
    Safe when several processes try at once (one rename wins)."""
    aside = target.with_name(f".{target.name}{REPLACED}")
    if target.exists() or not aside.is_dir():
        return False
    try:
        os.replace(aside, target)
    except OSError:
        return target.exists()
    return True


def recover(folder: str | Path) -> list[str]:
    """Undo or finish what killed writes left in `folder`: a folder moved aside whose replacement
    never arrived goes back under its name; staging files and folders are removed. Returns the
    names it touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    touched = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith(".") and name.endswith(REPLACED):
            if not restore_aside(folder / name[1 : -len(REPLACED)]):
                _remove(path)
        elif name.startswith(".") and (STAGING in name or _LEGACY.match(name)):
            _remove(path)
        else:
            continue
        touched.append(name)
    return touched


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
