"""Token ids -> text deltas for streaming, never splitting a multi-byte character.

The whole answer is re-decoded at each step (cheap next to a model step) and only the new
suffix is emitted. Held back until the next token: text ending in U+FFFD (an incomplete UTF-8
sequence), trailing whitespace (the final text is stripped), and any tail that could be the
start of a stop string. So the concatenated deltas always equal `text()`, the non-streamed answer.
"""

from __future__ import annotations

from .tokenizer import TextTokenizer


class IncrementalDecoder:
    def __init__(self, tokenizer: TextTokenizer, stop_strings: tuple = ()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False  # a stop string was found; the text ends before it
        self._final: str | None = None

    def push(self, token_id: int) -> str:
        """Add a token; returns the text that became final (possibly "")."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids).lstrip()
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped, self._final = True, text[:cut].rstrip()
            return self._emit(self._final)
        if text.endswith("\ufffd"):
            return ""
        text = text.rstrip()
        return self._emit(text[: len(text) - self._stop_prefix_length(text)])

    def finish(self) -> str:
        """Whatever is left once generation has ended."""
        return self._emit(self.text())

    def text(self) -> str:
        """The whole answer: stripped, and cut before the first stop string."""
        if self._final is not None:
            return self._final
        text = self.tokenizer.decode(self.ids).strip()
        cut = self._first_stop(text)
        return text if cut is None else text[:cut].rstrip()

    def _first_stop(self, text: str) -> int | None:
        hits = [text.find(s) for s in self.stop_strings if s in text]
        return min(hits) if hits else None

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest tail of `text` that a stop string starts with."""
        longest = 0
        for stop in self.stop_strings:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest

    def _emit(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        delta = text[len(self.sent) :]
        self.sent = text
        return delta
