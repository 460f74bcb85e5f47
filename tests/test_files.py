"""The staged writes every writer goes through (minicpmv/files.py): a failed write leaves the old
output whole, permissions follow the umask, a replaced folder is only moved aside, and `recover`
finishes or clears what a kill left."""

from __future__ import annotations

import os
import stat

import pytest

from minicpmv.errors import OutputError
from minicpmv.files import recover, staged_folder, staged_path, write_text_atomic


def test_a_failed_write_leaves_the_old_file_and_no_staging(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with staged_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_staged_outputs_follow_the_umask_not_mkstemps_0600(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "x")
    with staged_folder(tmp_path / "folder") as stage:
        (stage / "f").write_text("y")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~mask


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with staged_folder(target) as stage:
        (stage / "new.bin").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_recover_puts_back_a_folder_moved_aside_and_clears_staging(tmp_path):
    (tmp_path / ".checkpoint-000008.replaced").mkdir()  # a kill after the move, before the new one came
    (tmp_path / ".checkpoint-000008.replaced" / "trainer_state.pt").write_text("state")
    (tmp_path / ".checkpoint-000010.staging-abc").mkdir()
    (tmp_path / ".latest.staging-xyz").write_text("checkpoint-000010")
    (tmp_path / ".checkpoint-000004.x1y2z3").mkdir()  # what older versions left
    (tmp_path / ".latest.q9w8e7").write_text("")
    (tmp_path / ".hidden-user-file").write_text("mine")
    recover(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden-user-file", "checkpoint-000008"]
    assert (tmp_path / "checkpoint-000008" / "trainer_state.pt").read_text() == "state"


def test_recover_drops_an_aside_copy_once_its_replacement_is_in(tmp_path):
    (tmp_path / "checkpoint-000008").mkdir()
    (tmp_path / ".checkpoint-000008.replaced").mkdir()
    recover(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-000008"]


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda root: (root / "file").write_text("x") and root / "file" / "out.txt", "is a file, not a folder"),
        (lambda root: (root / "dir" / "out.txt").mkdir(parents=True) or root / "dir" / "out.txt", "is a folder"),
    ],
)
def test_unusable_targets_are_one_line_output_errors(make, words, tmp_path):
    with pytest.raises(OutputError, match=words):
        write_text_atomic(make(tmp_path), "x")
