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

And it reads request bodies into the app's own buffers. uvloop gives a plain protocol each
read as a new bytes object, which the parser copies once more for the body; here the
socket is read into a buffer (`buffered_protocol` wraps the protocol for uvloop), and
once a body of known length has begun, its bytes go past the parser: into the buffer the
app offers with the `gateway.http.readinto` extension when it waits for one (no copy at
all), else into the request's body as for any app.

    uvicorn.run(app, http=functools.partial(buffered_protocol, head_timeout=30.0))
"""

import asyncio
import errno
import json
import os
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httptools
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .errors import BackendError
from .storage.lanes import settled

ZERO_COPY = "http.response.zerocopysend"
READ_INTO = "gateway.http.readinto"
# A read into the app's buffer returns before the buffer is full once FILL_WAIT seconds
# pass with some bytes in it (a slow client), and at the end of the body.
FILL_WAIT = 0.05
SCRATCH = 256 * 1024  # what one read takes when no app buffer waits (uvloop's own size)
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


class _Scratch(threading.local):
    """Where a read goes when no app buffer waits for it: one per thread (one per event
    loop), as its bytes are copied out before the next read."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(SCRATCH))


_SCRATCH = _Scratch()


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        # Bytes of the current request's body still to come. Once its first read is
        # parsed, they bypass the parser (which is replaced at the end of the body).
        self._left = 0
        self._sink: memoryview | None = None  # the app's buffer, while it waits for one
        self._filled = 0  # how much of it holds body bytes
        self._waiter: asyncio.Future[None] | None = None
        self._fill_timer: asyncio.TimerHandle | None = None
        self.buffered = False  # set by _Buffered

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
            cycle.protocol = self  # type: ignore[attr-defined]
            extensions = cycle.scope.setdefault("extensions", {})
            extensions[ZERO_COPY] = {}
            if self.buffered:  # its reads come through get_buffer (see _Buffered)
                extensions[READ_INTO] = {"readinto": cycle.readinto}  # type: ignore[attr-defined]
                self._left = _content_length(self.headers)

    def on_body(self, body: bytes) -> None:
        self._left = max(0, self._left - len(body))
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._left = 0
        super().on_message_complete()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._wake()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # Answered before its body was read (an early 412, 401, 409): the rest of the
            # body is dropped as it comes, and each byte of it would put off the idle
            # keep-alive timeout. The body and the next request's head must come within
            # head_timeout instead, as if the next request had begun.
            self._arm()

    # --- reading into buffers (see buffered_protocol) -------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._sink is not None:
            room = min(len(self._sink) - self._filled, self._left)
            return self._sink[self._filled : self._filled + room]
        return _SCRATCH.view

    def buffer_updated(self, nbytes: int) -> None:
        if self._sink is not None:
            self._filled += nbytes
            self._left -= nbytes
            if not self._left:
                self._sink = None
                self._end_body()
            elif self._filled == len(self._sink):
                self._sink = None  # full: the next bytes wait in the socket for the app
                self.flow.pause_reading()
                self._wake()
            return
        view = _SCRATCH.view
        if self._left and self.parser is not None:  # the rest of a body: the parser waits
            self._unset_keepalive_if_required()
            taken = min(nbytes, self._left)
            self.on_body(bytes(view[:taken]))
            if self._left:
                return
            self._end_body()
            if taken == nbytes:
                return
            view = view[taken:]
            nbytes -= taken
        self.data_received(bytes(view[:nbytes]))

    def _end_body(self) -> None:
        """The body ended past the parser: a fresh parser for the next request."""
        self.parser = httptools.HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's
        self.on_message_complete()

    async def fill(self, sink: memoryview, filled: int) -> int:
        """Read the body into `sink` after its first `filled` bytes until it is full, the
        body ends, or FILL_WAIT passes with bytes in it; return how much it then holds."""
        self._sink, self._filled = sink, filled
        self._waiter = self.loop.create_future()
        self._fill_timer = self.loop.call_later(FILL_WAIT, self._fill_waited)
        self.flow.resume_reading()
        try:
            await self._waiter
        finally:
            if self._fill_timer is not None:
                self._fill_timer.cancel()
            if self._sink is not None and self._left and not self.transport.is_closing():
                self.flow.pause_reading()  # until the app asks for more
            filled, self._sink, self._waiter, self._fill_timer = self._filled, None, None, None
        return filled

    def _fill_waited(self) -> None:
        if self._filled:
            self._fill_timer = None
            self._wake()
        else:
            self._fill_timer = self.loop.call_later(FILL_WAIT, self._fill_waited)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

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


class _Buffered(asyncio.BufferedProtocol):
    """What uvloop is given: it reads into buffers for a protocol that is not an
    asyncio.Protocol, as uvicorn's is."""

    __slots__ = ("http",)

    def __init__(self, http: GatewayHttpProtocol) -> None:
        self.http = http
        http.buffered = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.http.connection_made(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.http.connection_lost(exc)

    def eof_received(self) -> None:
        self.http.eof_received()

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.http.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.http.buffer_updated(nbytes)


def buffered_protocol(*args: Any, **kwargs: Any) -> _Buffered:
    """A GatewayHttpProtocol (same arguments) that reads into buffers."""
    return _Buffered(GatewayHttpProtocol(*args, **kwargs))


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The body's length, or 0 when it is chunked or has none (the parser, which checked
    the headers already, then reads it all)."""
    length = 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return 0
        if name == b"content-length" and value.strip().isdigit():
            length = int(value)
    return length


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

    def take_into(self, view: memoryview) -> int:
        """Move as many bytes as fit into `view`; return how many."""
        at = 0
        while self.chunks and at < len(view):
            chunk = self.chunks[0]
            taken = min(len(chunk), len(view) - at)
            view[at : at + taken] = chunk[:taken]
            at += taken
            if taken == len(chunk):
                self.chunks.pop(0)
            else:
                self.chunks[0] = chunk[taken:]
        self.size -= at
        return at


class _Cycle(RequestResponseCycle):
    """uvicorn's request cycle, handing the app the chunks of a _Body."""

    body: _Body  # type: ignore[assignment]

    protocol: GatewayHttpProtocol

    async def receive(self) -> Any:
        self._continue()
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": self.body.take(), "more_body": self.more_body}

    async def readinto(self, view: memoryview) -> int:
        """The READ_INTO extension: the body's next bytes into `view`, until it is full,
        the body ends, or the client pauses (FILL_WAIT) with bytes in it; how many (0 at
        the end of the body). ClientDisconnect once the client has left."""
        self._continue()
        filled = self.body.take_into(view)
        protocol = self.protocol
        while filled < len(view) and not (self.disconnected or self.response_complete):
            if not self.more_body and not self.body:
                return filled  # the end of the body
            if self.body:
                filled += self.body.take_into(view[filled:])
            elif protocol.cycle is self and protocol._left:  # past the parser
                filled = await protocol.fill(view, filled)
                if filled:
                    return filled  # else the client left
            elif filled:
                return filled
            else:  # a chunked body, through the parser
                self.flow.resume_reading()
                await self.message_event.wait()
                self.message_event.clear()
        if filled or not (self.disconnected or self.response_complete):
            return filled
        raise ClientDisconnect()

    def _continue(self) -> None:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False

    async def send(self, message: Any) -> None:
        if message["type"] == ZERO_COPY:
            await self._send_file(message)
            return
        if message["type"] == "http.response.start" and self.waiting_for_100_continue:
            # Answered before the client was asked for its body (an early 412, 413, 401):
            # it may send the body anyway, or the next request, and the two cannot be
            # told apart. The connection closes after this answer.
            self.keep_alive = False
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
