"""uvicorn's HTTP protocol, with a deadline on each request's line and headers.

uvicorn closes a keep-alive connection left idle between two requests, but it waits for ever
on a connection that sends nothing, or sends its headers a byte at a time (a slow loris):
enough of those exhaust the process's file descriptors. Here a request's head must arrive
within `head_timeout` of the connection (or of its first byte, for the next request of a
keep-alive connection); else the client gets a 408 and the connection is closed. The body
has its own limit, enforced where it is read (gateway.pacing). And a request the parser
cannot read gets a 400 problem+json, like every other error, not uvicorn's plain text.

It also offers the ASGI zero-copy send extension (`http.response.zerocopysend`): a body
sent from an open file goes from the page cache to the socket with sendfile(2), never
through the process's memory, in a worker thread (a read from disk may block) that
gives its thread back while the client takes nothing. When the socket is not a plain
TCP one, or still holds earlier bytes, the file is read and sent in chunks instead. The
server sets the message's `sent` to the bytes that went out: fewer than `count` if the
client left.

    uvicorn.run(app, http=functools.partial(GatewayHttpProtocol, head_timeout=30.0))
"""

import asyncio
import errno
import json
import os
import select
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .errors import BackendError
from .storage.lanes import settled

ZERO_COPY = "http.response.zerocopysend"
# A step sends for at most STEP_SECONDS (a cancelled download waits for its step) and
# gives its thread back once the client has taken nothing for FULL_WAIT_MS.
STEP_SECONDS, FULL_WAIT_MS = 0.1, 20
# At most this much a sendfile(2) call. Asked for all the rest at once, the kernel sent
# 1 GiB to a client on loopback at 3.5 GB/s; 256 KiB to 1 MiB a call, at 5 to 6 GB/s
# with less CPU on both sides (64 KiB, or 2 MiB: less again).
SENDFILE_CALL = 1024 * 1024
_SENDERS = ThreadPoolExecutor(32, thread_name_prefix="gateway-send")
FALLBACK_CHUNK = 1024 * 1024
# what sendfile(2) meets when the client is gone
_LOST = (
    *(errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN),
    *(errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH),
)
SHORT = "The object's data is shorter than recorded."
UNREADABLE = "The object's data could not be read."
_MORE, _FULL, _GONE, _END = range(4)  # how a sendfile step ended


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
            cycle.scope.setdefault("extensions", {})[ZERO_COPY] = {}

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

    async def send(self, message: Any) -> None:
        if message["type"] == ZERO_COPY:
            await self._send_file(message)
        else:
            await super().send(message)

    async def _send_file(self, message: Any) -> None:
        """The zero-copy send extension: `count` bytes of `file` from `offset`. Sets the
        message's `sent`: fewer than `count` if the client left (the connection is then
        closed). BackendError if the file cannot be read, or ends before `count`."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        message["sent"] = 0
        if self.disconnected:
            return
        if not self.response_started or self.response_complete or self.chunked_encoding:
            raise RuntimeError(f"Unexpected ASGI message {ZERO_COPY!r}.")
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        offset = message.get("offset")
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        count = message.get("count")
        if count is None:
            count = os.fstat(fd).st_size - offset
        if self.scope["method"] == "HEAD" or not count:
            message["sent"] = count
        else:
            if count > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            if self._can_sendfile():
                sent = await self._sendfile(fd, offset, count)
                self.expected_content_length -= sent
            else:
                sent = await self._send_chunks(fd, offset, count)
            message["sent"] = sent
            if sent < count:  # the client left
                self.transport.close()
                return
        # what uvicorn does at the end of a body
        more_body = bool(message.get("more_body", False))
        await super().send({"type": "http.response.body", "body": b"", "more_body": more_body})

    def _can_sendfile(self) -> bool:
        transport = self.transport
        return (
            transport.get_extra_info("socket") is not None
            and transport.get_extra_info("sslcontext") is None
            and not transport.get_write_buffer_size()  # no bytes before ours still queued
        )

    async def _sendfile(self, fd: int, offset: int, count: int) -> int:
        """Send; return how much went (less than `count` if the client left)."""
        loop = asyncio.get_running_loop()
        # Ours to close: the transport may close its own descriptor meanwhile (the client
        # left), and the number could then name another connection's socket.
        out = os.dup(self.transport.get_extra_info("socket").fileno())
        sent = 0
        try:
            while sent < count and not self.disconnected:
                step = loop.run_in_executor(
                    _SENDERS, _sendfile_step, out, fd, offset + sent, count - sent
                )
                try:
                    went, outcome = await asyncio.shield(step)
                except asyncio.CancelledError:
                    await settled(step)  # it uses both descriptors until it ends
                    raise
                sent += went
                if outcome == _FULL:
                    await _writable(loop, out)  # a stalled client holds no thread
                elif outcome == _END:
                    raise BackendError(SHORT)
                elif outcome == _GONE:
                    break
        finally:
            os.close(out)
        return sent

    async def _send_chunks(self, fd: int, offset: int, count: int) -> int:
        """Read and send 1 MiB at a time; return how much went."""
        loop = asyncio.get_running_loop()
        sent = 0
        while sent < count and not self.disconnected:
            size = min(count - sent, FALLBACK_CHUNK)
            reading = loop.run_in_executor(_SENDERS, os.pread, fd, size, offset + sent)
            try:
                chunk = await asyncio.shield(reading)
            except asyncio.CancelledError:
                await settled(reading)  # it uses the file until it ends
                raise
            except OSError as exc:
                raise BackendError(UNREADABLE) from exc
            if not chunk:
                raise BackendError(SHORT)
            await super().send({"type": "http.response.body", "body": chunk, "more_body": True})
            if self.disconnected:
                break
            sent += len(chunk)
        return sent


def _sendfile_step(out: int, fd: int, offset: int, count: int) -> tuple[int, int]:
    """sendfile(2) to the non-blocking socket `out` for up to STEP_SECONDS, waiting up to
    FULL_WAIT_MS whenever it is full: the bytes sent, and _MORE (time is up, or all
    sent), _FULL (it stayed full), _GONE (the client left) or _END (the file ended)."""
    poller = select.poll()
    poller.register(out, select.POLLOUT)
    deadline = time.monotonic() + STEP_SECONDS
    sent = 0
    while sent < count and time.monotonic() < deadline:
        try:
            went = os.sendfile(out, fd, offset + sent, min(count - sent, SENDFILE_CALL))
        except BlockingIOError:
            if not poller.poll(FULL_WAIT_MS):
                return sent, _FULL
            continue
        except OSError as exc:
            if exc.errno in _LOST:
                return sent, _GONE
            raise BackendError(UNREADABLE) from exc  # the file's, not the client's
        if not went:
            return sent, _END
        sent += went
    return sent, _MORE


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Until the socket `fd` can take more bytes (or is closed, which the next step sees)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
