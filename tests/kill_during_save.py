"""Run `minicpmv train` (arguments as given) but die by SIGKILL in one phase of saving the
checkpoint of step KILL_STEP: `python kill_during_save.py PHASE KILL_STEP ARGS...`. Phases, in the
order a save goes through them:

  weights  the model files are in the staging folder, the trainer state is not
  staged   the staging folder is complete, not yet renamed
  aside    a folder of the same step (a re-save) has been moved aside, the new one is not in
  swapped  the new folder is in, the moved-aside one not yet removed
  latest   the checkpoint is in, `latest` is staged but not yet renamed
"""

import os
import signal
import sys
from pathlib import Path

import minicpmv.files as files
import minicpmv.training.checkpoints as checkpoints
import minicpmv.training.trainer as trainer
from minicpmv.cli import main

phase, kill_step = sys.argv[1], int(sys.argv[2])
saving = {"now": False}
real_save, real_model, real_fsync, real_replace = (
    trainer.save_checkpoint,
    checkpoints.save_model,
    files.fsync_tree,
    os.replace,
)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(output: Path, step: int, *args, **kwargs):
    saving["now"] = step == kill_step
    return real_save(output, step, *args, **kwargs)


def save_model(model, folder, *args, **kwargs):
    real_model(model, folder, *args, **kwargs)
    if saving["now"] and phase == "weights":
        die()


def fsync_tree(root):
    if saving["now"] and phase == "staged":
        die()
    real_fsync(root)


def replace(source, target, *args, **kwargs):
    source, target = Path(source), Path(target)
    if saving["now"] and phase == "latest" and target.name == "latest":
        die()
    real_replace(source, target, *args, **kwargs)
    if saving["now"] and phase == "aside" and target.name.endswith(files.REPLACED):
        die()
    if saving["now"] and phase == "swapped" and files.STAGING in source.name and target.name.startswith("checkpoint-"):
        die()


trainer.save_checkpoint, checkpoints.save_model, files.fsync_tree, os.replace = (
    save_checkpoint,
    save_model,
    fsync_tree,
    replace,
)
sys.exit(main(sys.argv[3:]))
