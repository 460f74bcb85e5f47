"""`minicpmv chat`: an interactive conversation in the terminal.

Type a message to get a streamed answer. Commands: `/image PATH` attaches an image to your next
message, `/system TEXT` sets the system prompt (`/system` shows it, `/system off` removes it),
`/clear` starts a new conversation, `/help` lists them, `/quit` (or Ctrl-D) leaves. Ctrl-C while
an answer is streaming stops that answer and keeps the session; at the prompt it leaves. Lines
can be edited and recalled with the arrow keys (readline), across sessions.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MiniCPMVError
from ..processing.image_io import load_image
from .options import (
    ModelFlags,
    SamplingFlags,
    add_generation_options,
    add_model_options,
    check_inputs,
    generation_options,
    load_model,
    wire,
)

HELP = "commands: /image PATH, /system [TEXT|off], /clear, /help, /quit"


@dataclass
class Session:
    options: dict
    history: list = field(default_factory=list)
    pending: list = field(default_factory=list)  # images for the next message


def chat(image: list[str], model: ModelFlags, sampling: SamplingFlags) -> int:
    """Run the chat loop until /quit, Ctrl-D or Ctrl-C at the prompt."""
    options = generation_options(sampling)
    check_inputs(options)  # the images are checked one by one below, with a message each
    chat_model = load_model(model)
    if options["preset"] == "precise":
        options["preset"] = "greedy"  # beams cannot stream; say so instead of failing every turn
        print("note: the precise (beam) preset cannot stream; using greedy", file=sys.stderr)
    session = Session(options, pending=[path for path in image if _check_image(path)])
    _line_editing()
    print(f"{chat_model.description}: ready. {HELP}", flush=True)
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(flush=True)
            return 0
        if line in ("/quit", "/exit"):
            return 0
        if line.startswith("/"):
            _command(line, session)
        elif line:
            turn = {"role": "user", "content": [{"image": p} for p in session.pending] + [line]}
            answer = _answer(chat_model, [*session.history, turn], session.options)
            if answer is not None:
                session.history += [turn, {"role": "assistant", "content": answer}]
                session.pending = []


def _command(line: str, session: Session) -> None:
    name, _, argument = line.partition(" ")
    argument = argument.strip()
    if name == "/clear":
        session.history, session.pending = [], []
        print("(conversation cleared)", flush=True)
    elif name == "/image":
        if argument and _check_image(argument):
            session.pending.append(argument)
            print(f"(image attached: {argument})", flush=True)
        elif not argument:
            print("usage: /image PATH", flush=True)
    elif name == "/system":
        if argument == "off":
            session.options["system_prompt"] = None
        elif argument:
            session.options["system_prompt"] = argument
        print(f"(system prompt: {session.options.get('system_prompt') or 'none'})", flush=True)
    elif name == "/help":
        print(HELP, flush=True)
    else:
        print(f"unknown command {name}; {HELP}", flush=True)


def _line_editing() -> None:
    """readline editing and a history file kept across sessions (where readline exists)."""
    try:
        import atexit
        import readline
    except ImportError:  # Windows without pyreadline: plain input()
        return
    from ..files import cache_dir

    path = cache_dir() / "chat_history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            readline.read_history_file(path)
    except OSError:
        return
    readline.set_history_length(1000)
    atexit.register(_save_history, readline, path)


def _save_history(readline, path: Path) -> None:
    try:
        readline.write_history_file(path)
    except OSError:
        pass  # a read-only home must not turn leaving into a traceback


def _answer(chat_model, messages: list, options: dict) -> str | None:
    """Stream one answer; returns its text (partial if stopped by Ctrl-C) or None on bad input.
    Ctrl-C stops the answer whenever it comes: while the images are encoded too."""
    stream = None
    try:
        stream = chat_model.stream(messages, **options)
        for delta in stream:
            print(delta, end="", flush=True)
    except MiniCPMVError as exc:
        print(f"error: {exc}", flush=True)
        return None
    except KeyboardInterrupt:
        print(" [stopped]", flush=True)
        if stream is None:  # stopped before the answer began: the question is not kept
            return None
        stream.cancel()
    else:
        print(flush=True)
    if stream.result is not None:
        print(stream.result.timing_line(), file=sys.stderr, flush=True)
        return stream.result.text
    return ""


def _check_image(path: str) -> bool:
    try:
        load_image(path)
        return True
    except MiniCPMVError as exc:
        print(f"error: {exc}", flush=True)
        return False


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "chat", help="interactive chat in the terminal", description=__doc__.split("\n\n")[0]
    )
    add_model_options(parser)
    parser.add_argument("--image", action="append", default=[], help="image for the first message (repeatable)")
    add_generation_options(parser)
    wire(parser, chat)
