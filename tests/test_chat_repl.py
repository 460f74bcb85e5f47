"""`minicpmv chat` driven like a person would, through a pseudo-terminal: /image, /clear, a bad
image, Ctrl-C during an answer (the session stays), /help, /system, line recall, /quit."""

import os
import signal
import sys

import pexpect
from conftest import REFERENCE, TINY


def test_repl_commands_and_ctrl_c(tmp_path):
    # --min-tokens keeps the tiny model talking long enough to be interrupted.
    child = pexpect.spawn(
        sys.executable,
        ["-m", "minicpmv", "chat", "-m", str(TINY["2.6"] / "checkpoint"), "-n", "20000", "--min-tokens", "20000"],
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 200),
        env={**os.environ, "MINICPMV_CACHE_DIR": str(tmp_path / "cache")},
        # a suite started in the background (`cmd &`) ignores SIGINT, and children inherit that:
        # Ctrl-C must reach this one as it reaches a program started from a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    child.logfile_read = open(tmp_path / "session.log", "w")
    child.expect("ready")
    child.expect("> ")
    child.sendline(f"/image {REFERENCE / 'images' / 'img_a_60x40.png'}")
    child.expect(r"\(image attached")
    child.expect("> ")
    child.sendline(f"/image {tmp_path / 'missing.png'}")
    child.expect("error: .*missing.png: no such file")
    child.expect("> ")
    child.sendline("What is in the image?")
    child.expect(r"\S{20}")  # the answer is streaming
    child.sendintr()
    child.expect(r"\[stopped\]")
    child.expect("decode")  # the timing line of the stopped answer
    child.expect("> ")
    child.sendline("/clear")
    child.expect(r"\(conversation cleared\)")
    child.sendline("/nonsense")
    child.expect("unknown command /nonsense")
    child.sendline("/help")
    child.expect(r"/system \[TEXT\|off\]")
    child.sendline("/system Answer briefly.")
    child.expect(r"\(system prompt: Answer briefly.\)")
    child.sendline("/system off")
    child.expect(r"\(system prompt: none\)")
    child.expect("> ")
    child.send("\x1b[A\x1b[A")  # readline: up twice recalls "/system Answer briefly."
    child.sendline("")
    child.expect(r"\(system prompt: Answer briefly.\)")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert "/system Answer briefly." in (tmp_path / "cache" / "chat_history").read_text()  # kept for next time
    assert child.exitstatus == 0
