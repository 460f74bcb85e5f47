"""Run `minicpmv train` (arguments as given) but die by SIGKILL in the middle of saving the
checkpoint of step KILL_STEP (first argument), after part of it is on disk: a crash at the worst
moment, for the resume test."""

import os
import signal
import sys
from pathlib import Path

import minicpmv.training.trainer as trainer
from minicpmv.cli import main

kill_step = int(sys.argv[1])
real_save = trainer.save_checkpoint


def save_then_die(output: Path, step: int, *args, **kwargs):
    if step == kill_step:
        partial = output / f".checkpoint-{step:06d}.partial"
        partial.mkdir(parents=True)
        (partial / "model.safetensors").write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(output, step, *args, **kwargs)


trainer.save_checkpoint = save_then_die
sys.exit(main(sys.argv[2:]))
