"""uvicorn's HTTP protocol, with a deadline on each request's line and headers.

uvicorn closes a keep-alive connection left idle between two requests, but it waits for ever
on a connection that sends nothing, or sends its headers a byte at a time (a slow loris):
enough of those exhaust the process's file descriptors. Here a request's head must arrive
within `head_timeout` of the connection (or of its first byte, for the next request of a
keep-alive connection); else the client gets a 408 and the connection is closed. The body
has its own limit, enforced where it is read (gateway.pacing).

    uvicorn.run(app, http=functools.partial(GatewayHttpProtocol, head_timeout=30.0))
"""

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_PROBLEM = json.dumps(
    {
        "type": "about:blank",
        "title": "Request Timeout",
        "status": 408,
        "detail": "The request's headers did not arrive in time.",
        "code": "bad-request",
    }
).encode()
_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: application/problem+json\r\n"
    b"content-length: %d\r\n"
    b"connection: close\r\n\r\n" % len(_PROBLEM)
) + _PROBLEM


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # no response under way
            self.transport.write(_RESPONSE)
        self.transport.close()
