"""One model, one worker thread, a bounded queue in front of it.

The model is not thread-safe, so one thread owns it; HTTP handlers hand it jobs and read back
events on their own asyncio loop. Greedy non-streamed jobs waiting together share one batched
decode (the engine's left-padded batch path).
Admission is counted (waiting + running): past `max_queue` a request is refused at once (429)
instead of waiting without bound. A job's client can cancel it at any time: waiting, it is
skipped; running, its stream stops at the next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

from ..errors import MiniCPMVError, PromptTooLongError
from .protocol import APIError

log = logging.getLogger("minicpmv.serve")


@dataclass
class Job:
    """One chat completion: what to answer, and where its events go.

    Events, in order: ("start", prompt_tokens), then ("delta", text)..., then ("done",
    Generation); or a single ("error", APIError) at any point."""

    messages: list
    options: dict
    loop: asyncio.AbstractEventLoop
    max_tokens: int | None = None  # as the client asked; None = the engine's default, capped by context
    streamed: bool = False
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    stream: object = None  # the TextStream once running

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
    """Runs jobs on `chat` (a ChatModel) in a daemon thread: streams one at a time; non-streamed
    greedy requests with the same settings that are waiting together are decoded as one batch
    (up to `max_batch`), which costs a CPU little more than one of them."""

    def __init__(self, chat, max_queue: int = 16, max_batch: int = 8):
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        self.chat = chat
        self.context = chat.llm.cfg.max_position_embeddings
        self.max_queue = max_queue
        self.max_batch = min(max_batch, chat.max_batch or max_batch)
        self._waiting: deque[Job] = deque()
        self._lock = threading.Condition()
        self._admitted = 0
        self._closing = False
        self.counts = {"completed": 0, "cancelled": 0, "refused": 0, "failed": 0, "batches": 0}
        self._thread = threading.Thread(target=self._run, name="minicpmv-model-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue a job, or raise APIError 429 when `max_queue` jobs are already admitted."""
        with self._lock:
            if self._admitted >= self.max_queue:
                self.counts["refused"] += 1
                raise APIError(429, f"the server is busy: {self._admitted} requests are queued or running "
                                    f"(limit {self.max_queue}); retry later", code="queue_full",
                               kind="rate_limit_error")
            self._admitted += 1
            self._waiting.append(job)
            self._lock.notify()

    def status(self) -> dict:
        with self._lock:
            return {"admitted": self._admitted, "max_queue": self.max_queue, **self.counts}

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()

    def _next_jobs(self) -> list[Job]:
        """The oldest waiting job, with the waiting jobs that can share its batch; [] when closing."""
        with self._lock:
            while not self._waiting and not self._closing:
                self._lock.wait()
            if self._closing:
                return []
            first = self._waiting.popleft()
            jobs = [first]
            if first.batchable():
                for job in list(self._waiting):
                    if len(jobs) < self.max_batch and job.batchable() and job.options == first.options:
                        self._waiting.remove(job)
                        jobs.append(job)
            return jobs

    def _run(self) -> None:
        while jobs := self._next_jobs():
            live = [job for job in jobs if not job.cancelled.is_set()]
            outcomes = ["cancelled"] * (len(jobs) - len(live))
            try:
                if len(live) == 1:
                    outcomes.append(self._serve(live[0]))
                elif live:
                    outcomes += self._serve_batch(live)
            except Exception as exc:  # noqa: BLE001 - one bad job must not stop the worker
                log.exception("generation failed")
                for job in live:
                    job.emit("error", APIError(500, f"generation failed: {type(exc).__name__}: {exc}",
                                               kind="server_error"))
                outcomes += ["failed"] * len(live)
            with self._lock:
                self._admitted -= len(jobs)
                self.counts["batches"] += len(live) > 1
                for outcome in outcomes:
                    if outcome:
                        self.counts[outcome] += 1

    def _serve(self, job: Job) -> str | None:
        """Run one job; returns the count it adds to ("completed", "cancelled" or None for a 400)."""
        try:
            # one token of room must stay for the answer
            stream = self.chat.stream(job.messages, max_input_length=self.context - 1, **job.options)
        except PromptTooLongError as exc:
            job.emit("error", APIError(400, f"messages: {exc}", "messages", "context_length_exceeded"))
            return None
        except MiniCPMVError as exc:
            job.emit("error", APIError(400, str(exc), "messages"))
            return None
        if job.max_tokens is not None and stream.prompt_tokens + job.max_tokens > self.context:
            job.emit("error", _over_context(stream.prompt_tokens, job.max_tokens, self.context))
            return None
        job.stream = stream
        if job.cancelled.is_set():  # cancelled while the prompt was being prepared
            stream.cancel()
        job.emit("start", stream.prompt_tokens)
        for delta in stream:
            job.emit("delta", delta)
        job.emit("done", stream.result)
        return "cancelled" if stream.result.stopped_by == "cancelled" else "completed"

    def _serve_batch(self, jobs: list[Job]) -> list[str | None]:
        try:
            generations = self.chat.generate_batch([job.messages for job in jobs], max_input_length=self.context - 1,
                                                   **jobs[0].options)
        except MiniCPMVError:  # one bad conversation fails the batch: serve each alone for its own answer
            return [self._serve(job) for job in jobs]
        return [self._deliver(job, generation) for job, generation in zip(jobs, generations)]

    def _deliver(self, job: Job, generation) -> str | None:
        prompt = len(generation.prompt_token_ids)
        if job.max_tokens is not None and prompt + job.max_tokens > self.context:
            job.emit("error", _over_context(prompt, job.max_tokens, self.context))
            return None
        job.emit("start", prompt)
        job.emit("done", generation)
        return "completed"


def _over_context(prompt_tokens: int, max_tokens: int, context: int) -> APIError:
    return APIError(400, f"max_tokens: the prompt is {prompt_tokens} tokens and max_tokens is {max_tokens}; "
                         f"together they exceed the model's context of {context} tokens",
                    "max_tokens", "context_length_exceeded")
