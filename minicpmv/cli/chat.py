"""`minicpmv chat`: an interactive conversation in the terminal.

Type a message to get a streamed answer. Commands: `/image PATH` attaches an image to your next
message, `/clear` starts a new conversation, `/quit` (or Ctrl-D) leaves. Ctrl-C while an answer
is streaming stops that answer and keeps the session; at the prompt it leaves.
"""

from __future__ import annotations

import sys

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

HELP = "commands: /image PATH, /clear, /quit"


def chat(image: list[str], model: ModelFlags, sampling: SamplingFlags) -> int:
    """Run the chat loop until /quit, Ctrl-D or Ctrl-C at the prompt."""
    options = generation_options(sampling)
    check_inputs(options)  # the images are checked one by one below, with a message each
    chat_model = load_model(model)
    if options["preset"] == "precise":
        options["preset"] = "greedy"  # beams cannot stream; say so instead of failing every turn
        print("note: the precise (beam) preset cannot stream; using greedy", file=sys.stderr)
    history: list[dict] = []
    pending = [path for path in image if _check_image(path)]
    print(f"{chat_model.description}: ready. {HELP}", flush=True)
    while True:
        try:
            line = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(flush=True)
            return 0
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/clear":
            history, pending = [], []
            print("(conversation cleared)", flush=True)
        elif line.startswith("/image"):
            path = line[len("/image") :].strip()
            if path and _check_image(path):
                pending.append(path)
                print(f"(image attached: {path})", flush=True)
            elif not path:
                print("usage: /image PATH", flush=True)
        elif line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", flush=True)
        else:
            turn = {"role": "user", "content": [{"image": p} for p in pending] + [line]}
            answer = _answer(chat_model, [*history, turn], options)
            if answer is not None:
                history += [turn, {"role": "assistant", "content": answer}]
                pending = []


def _answer(chat_model, messages: list, options: dict) -> str | None:
    """Stream one answer; returns its text (partial if stopped by Ctrl-C) or None on bad input."""
    try:
        stream = chat_model.stream(messages, **options)
    except MiniCPMVError as exc:
        print(f"error: {exc}", flush=True)
        return None
    try:
        for delta in stream:
            print(delta, end="", flush=True)
    except KeyboardInterrupt:
        stream.cancel()
        print(" [stopped]", end="", flush=True)
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
