"""Connection limits uvicorn does not set by itself: a connection that never completes a request
head is kept forever (uvicorn's keep-alive timer starts only after a first response), and nothing
bounds how many are open, so a few hundred idle sockets starve the process of file descriptors and
`/health` stops answering. Here each connection gets `head_timeout_s` to send a whole request head,
and past `max_connections` the oldest connection waiting for a request head is closed to make
room (a flood of idle sockets churns itself while clients that send requests are served); when
every connection is busy with a request, the new one gets an immediate 503."""

from __future__ import annotations

import asyncio

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

_BUSY_BODY = (
    b'{"error": {"message": "too many open connections; retry later", "type": "server_error", '
    b'"param": null, "code": "too_many_connections"}}'
)
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def guarded_protocol(head_timeout_s: float, max_connections: int) -> type:
    """An h11 protocol class with a request-head deadline and a connection cap."""

    class GuardedH11(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._opened = self.loop.time()
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                idle = [c for c in self.connections if c is not self and c._waiting_for_head()]
                if not idle:
                    transport.write(BUSY)
                    transport.close()
                    return
                oldest = min(idle, key=lambda c: c._opened)
                oldest.connections.discard(oldest)  # counted out now; its close completes later
                oldest.transport.close()
            self._arm()

        def _waiting_for_head(self) -> bool:
            return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # part of a next request head: it has a deadline too
                self._arm()
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(head_timeout_s, self._head_overdue)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_overdue(self) -> None:
            self._head_timer = None
            if self._waiting_for_head():
                self.transport.close()

    return GuardedH11


def uvicorn_config(app, settings, **options) -> uvicorn.Config:
    """uvicorn's config for `app` under `settings` (ServerSettings): the guarded protocol, and idle
    keep-alive connections closed after `head_timeout_s` as well."""
    return uvicorn.Config(
        app,
        http=guarded_protocol(settings.head_timeout_s, settings.max_connections),
        timeout_keep_alive=max(1, int(settings.head_timeout_s)),
        **options,
    )
