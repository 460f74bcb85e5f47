"""One model, one worker thread, a bounded queue in front of it.

The model is not thread-safe, so one thread owns it; HTTP handlers hand it jobs and read back
events on their own asyncio loop. Several answers advance in turn, a token each; greedy
non-streamed jobs waiting together share one batched decode (the engine's left-padded batch).
Admission is counted (waiting + running) and happens before a request's images are decoded: past
`max_queue` a request is refused at once (429) instead of waiting without bound, and the decoded
pixels of all admitted requests stay under `max_pixels` (more: 429) however small the files were. A job's client can cancel it at any time: waiting, it is
skipped; running, its stream stops at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import MiniCPMVError, PromptTooLongError
from .protocol import APIError

log = logging.getLogger("minicpmv.serve")


@dataclass
class Ticket:
    """One admitted request's place: a queue slot and the pixels it holds, given back once."""

    pixels: int = 0
    released: bool = False


@dataclass
class Job:
    """One chat completion: what to answer, and where its events go.

    Events, in order: ("start", prompt_tokens), then ("delta", text)... (streamed jobs only),
    then ("done", Generation); or a single ("error", APIError) at any point."""

    messages: list
    options: dict
    loop: asyncio.AbstractEventLoop
    max_tokens: int | None = None  # as the client asked; None = the engine's default, capped by context
    streamed: bool = False
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stream: object = None  # the TextStream once running
    ticket: Ticket | None = None  # from ModelWorker.admit(); submit() takes one if None

    def emit(self, kind: str, payload=None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the client's loop is gone (server shutting down): nobody to tell
            pass

    def batchable(self) -> bool:
        """Greedy and not streamed: decoded with others, its answer is the same as alone."""
        return not self.streamed and not self.options.get("temperature")

    def cancel(self) -> None:
        self.cancelled.set()
        if self.stream is not None:
            self.stream.cancel()


class ModelWorker:
    """Runs jobs on `chat` (a ChatModel) in a daemon thread.

    Up to `max_streams` answers run interleaved, one token of each in turn (each has its own KV
    cache), so every client sees its answer progress; greedy non-streamed requests with the same
    settings that are waiting together are decoded as one batch of up to `max_batch`."""

    def __init__(
        self, chat, max_queue: int = 16, max_batch: int = 1, max_streams: int = 4, max_pixels: int | None = None
    ):
        if min(max_queue, max_batch, max_streams) < 1:
            raise ValueError("max_queue, max_batch and max_streams must be at least 1")
        self.max_pixels = max_pixels
        self._pixels = 0
        self.chat = chat
        self.context = chat.llm.cfg.max_position_embeddings
        self.max_queue = max_queue
        self.max_batch = min(max_batch, chat.max_batch or max_batch)
        self.max_streams = max_streams if chat.independent_streams else 1
        self._waiting: deque[Job] = deque()
        self._lock = threading.Condition()
        self._admitted = 0
        self._closing = False
        self.counts = {"completed": 0, "cancelled": 0, "refused": 0, "failed": 0, "batches": 0}
        self.on_answer = None  # called with each finished Generation (the server's metrics)

    def start(self) -> threading.Thread:
        """Run the worker in a daemon thread (tests, embedding). `minicpmv serve` calls `run()` on
        the main thread instead: OpenMP's parallel regions, which the kernels start thousands of
        times a second, cost up to twice as much from a thread that is not the process's first."""
        thread = threading.Thread(target=self.run, name="minicpmv-model-worker", daemon=True)
        thread.start()
        return thread

    def admit(self) -> Ticket:
        """A queue slot for a request about to be prepared, or APIError 429 when `max_queue`
        requests are already admitted. Give it back with `release` unless a job takes it."""
        with self._lock:
            if self._admitted >= self.max_queue:
                self.counts["refused"] += 1
                raise APIError(
                    429,
                    f"the server is busy: {self._admitted} requests are queued or running "
                    f"(limit {self.max_queue}); retry later",
                    code="queue_full",
                    kind="rate_limit_error",
                )
            self._admitted += 1
            return Ticket()

    def reserve_pixels(self, ticket: Ticket, pixels: int) -> None:
        """Count `pixels` (about to be decoded) against the server's budget, or APIError 429."""
        with self._lock:
            if self.max_pixels is not None and self._pixels + pixels > self.max_pixels:
                self.counts["refused"] += 1
                raise APIError(
                    429,
                    f"the server is busy: the requests it holds have {self._pixels} pixels of "
                    f"images; {pixels} more would pass its limit of {self.max_pixels}; retry later",
                    code="images_busy",
                    kind="rate_limit_error",
                )
            self._pixels += pixels
            ticket.pixels += pixels

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            if not ticket.released:
                ticket.released = True
                self._admitted -= 1
                self._pixels -= ticket.pixels

    def submit(self, job: Job) -> None:
        """Queue a job under its ticket (admitted now if it has none: 429 when full)."""
        if job.ticket is None:
            job.ticket = self.admit()
        with self._lock:
            self._waiting.append(job)
            self._lock.notify()

    def status(self) -> dict:
        with self._lock:
            return {
                "admitted": self._admitted,
                "max_queue": self.max_queue,
                "image_pixels": self._pixels,
                **self.counts,
            }

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()

    def _next_jobs(self, block: bool) -> list[Job] | None:
        """The oldest waiting job with the waiting jobs that can share its batch; [] when none
        waits (and not `block`), None when closing."""
        with self._lock:
            while block and not self._waiting and not self._closing:
                self._lock.wait()
            if self._closing:
                return None
            if not self._waiting:
                return []
            first = self._waiting.popleft()
            jobs = [first]
            if first.batchable():
                for job in list(self._waiting):
                    if len(jobs) < self.max_batch and job.batchable() and job.options == first.options:
                        self._waiting.remove(job)
                        jobs.append(job)
            return jobs

    def _finish(self, job: Job, outcome: str | None, generation=None) -> None:
        """`outcome`: the count it adds to ("completed", "cancelled", "failed"; None for a 400)."""
        self.release(job.ticket)
        with self._lock:
            if outcome:
                self.counts[outcome] += 1
        if generation is not None and self.on_answer is not None:
            self.on_answer(generation)

    def run(self) -> None:
        """Serve jobs until `close()`."""
        running: list[tuple[Job, Iterator[str]]] = []
        while True:
            if len(running) < self.max_streams:
                jobs = self._next_jobs(block=not running)
                if jobs is None:
                    return
                for job in [job for job in jobs if job.cancelled.is_set()]:
                    self._finish(job, "cancelled")
                live = [job for job in jobs if not job.cancelled.is_set()]
                if len(live) > 1:
                    self._serve_batch(live)
                elif live and (stream := self._start(live[0])) is not None:
                    running.append((live[0], iter(stream)))
            for entry in list(running):  # one piece of each running answer, in turn
                if not self._step(*entry):
                    running.remove(entry)

    def _start(self, job: Job):
        """Prepare a job's prompt (images encoded) and return its TextStream, or None if refused."""
        try:
            # one token of room must stay for the answer
            stream = self.chat.stream(job.messages, max_input_length=self.context - 1, **job.options)
        except PromptTooLongError as exc:
            return self._refuse(job, APIError(400, f"messages: {exc}", "messages", "context_length_exceeded"))
        except MiniCPMVError as exc:
            return self._refuse(job, APIError(400, str(exc), "messages"))
        except Exception as exc:  # noqa: BLE001 - one bad job must not stop the worker
            return self._fail(job, exc)
        if job.max_tokens is not None and stream.prompt_tokens + job.max_tokens > self.context:
            return self._refuse(job, _over_context(stream.prompt_tokens, job.max_tokens, self.context))
        job.stream = stream
        if job.cancelled.is_set():  # cancelled while the prompt was being prepared
            stream.cancel()
        job.emit("start", stream.prompt_tokens)
        return stream

    def _step(self, job: Job, pieces: Iterator[str]) -> bool:
        """Send the job's next piece of text; False once its answer has ended."""
        try:
            piece = next(pieces)
            if job.streamed:  # a plain answer is sent whole, from the result
                job.emit("delta", (piece, job.stream.delta_logprobs))
            return True
        except StopIteration:
            result = job.stream.result  # counted before the client hears, so /health agrees with it
            self._finish(job, "cancelled" if result.stopped_by == "cancelled" else "completed", result)
            job.emit("done", result)
        except MiniCPMVError as exc:
            self._refuse(job, APIError(400, str(exc)))
        except Exception as exc:  # noqa: BLE001
            self._fail(job, exc)
        return False

    def _refuse(self, job: Job, error: APIError) -> None:
        self._finish(job, None)
        job.emit("error", error)

    def _fail(self, job: Job, exc: Exception) -> None:
        log.exception("generation failed")
        self._finish(job, "failed")
        job.emit("error", APIError(500, f"generation failed: {type(exc).__name__}: {exc}", kind="server_error"))

    def _serve_batch(self, jobs: list[Job]) -> None:
        try:
            generations = self.chat.generate_batch(
                [job.messages for job in jobs], max_input_length=self.context - 1, **jobs[0].options
            )
        except MiniCPMVError:  # one bad conversation fails the batch: each alone gets its own answer or error
            for job in jobs:
                if (stream := self._start(job)) is not None:
                    pieces = iter(stream)
                    while self._step(job, pieces):
                        pass
            return
        except Exception as exc:  # noqa: BLE001
            for job in jobs:
                self._fail(job, exc)
            return
        with self._lock:
            self.counts["batches"] += 1
        for job, generation in zip(jobs, generations):
            prompt = len(generation.prompt_token_ids)
            if job.max_tokens is not None and prompt + job.max_tokens > self.context:
                self._refuse(job, _over_context(prompt, job.max_tokens, self.context))
                continue
            self._finish(job, "completed", generation)
            job.emit("start", prompt)
            job.emit("done", generation)


def _over_context(prompt_tokens: int, max_tokens: int, context: int) -> APIError:
    return APIError(
        400,
        f"max_tokens: the prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}; "
        f"together they exceed the model's context of {context} tokens",
        "max_tokens",
        "context_length_exceeded",
    )
