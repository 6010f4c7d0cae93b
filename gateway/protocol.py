"""uvicorn's HTTP protocol, with a deadline on each request's line and headers.

uvicorn closes a keep-alive connection left idle between two requests, but it waits for ever
on a connection that sends nothing, or sends its headers a byte at a time (a slow loris):
enough of those exhaust the process's file descriptors. Here a request's head must arrive
within `head_timeout` of the connection (or of its first byte, for the next request of a
keep-alive connection); else the client gets a 408 and the connection is closed. The body
has its own limit, enforced where it is read (gateway.pacing). And a request the parser
cannot read gets a 400 problem+json, like every other error, not uvicorn's plain text.

    uvicorn.run(app, http=functools.partial(GatewayHttpProtocol, head_timeout=30.0))
"""

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


def _problem(status: int, title: str, detail: str) -> bytes:
    """A whole response, written before any app sees the request (RFC 9457, as the app's)."""
    problem = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    body = json.dumps(problem | {"code": "bad-request"}).encode()
    head = (
        f"HTTP/1.1 {status} {title}\r\ncontent-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


_TIMED_OUT = _problem(408, "Request Timeout", "The request's headers did not arrive in time.")


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
        cycle = self.cycle
        if type(cycle) is RequestResponseCycle:  # a new request's, not an upgrade's
            cycle.__class__ = _Cycle
            cycle.body = _Body()  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a request it cannot parse is text/plain; errors here are
        # problems, whoever sends them
        self.transport.write(_problem(400, "Bad Request", msg))
        self.transport.close()

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
            self.transport.write(_TIMED_OUT)
        self.transport.close()


class _Body:
    """A request body as it arrived: the parser's chunks kept as they are. uvicorn appends
    them to a bytearray, whose growth copies them again and again while the app is busy,
    then copies it all once more into the message."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def __iadd__(self, chunk: bytes) -> "_Body":
        self.chunks.append(chunk)
        self.size += len(chunk)
        return self

    def __len__(self) -> int:
        return self.size

    def take(self) -> bytes:
        chunks, self.chunks, self.size = self.chunks, [], 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Cycle(RequestResponseCycle):
    """uvicorn's request cycle, handing the app the chunks of a _Body."""

    body: _Body  # type: ignore[assignment]

    async def receive(self) -> Any:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": self.body.take(), "more_body": self.more_body}
