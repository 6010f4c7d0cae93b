"""A TCP proxy on loopback that breaks connections on purpose, in the spirit of toxiproxy.

    with FaultProxy(upstream_port) as proxy:      # forwards 127.0.0.1:proxy.port -> upstream
        proxy.set(cut_after=1_000_000)            # reset a connection once it sent 1 MB up
        ...
        proxy.set()                               # heal: forward everything again

Faults (any combination): `refuse` (accept and close at once), `cut_after` (reset after so
many bytes client -> upstream), `cut_reply_after` (reset after so many bytes upstream ->
client), `lose_reply_to` (forward a request whose bytes hold this pattern, then reset the
connection instead of passing its reply on: the upstream acted, the client never hears;
`lose_limit` replies at most, if given),
`latency` (seconds before each chunk is forwarded), `rate` (bytes per second, each
direction), `stall` (a black hole: nothing passes, and the connections caught in it are
reset when it ends).
The proxy runs its own event loop in a thread, so sync and async tests can both use it.
"""

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, replace
from typing import Any

CHUNK = 65536


@dataclass(frozen=True)
class Faults:
    refuse: bool = False
    cut_after: int | None = None
    cut_reply_after: int | None = None
    lose_reply_to: bytes | None = None
    lose_limit: int | None = None
    latency: float = 0.0
    rate: float | None = None
    stall: bool = False


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.faults = Faults()
        self.connections = 0
        self.cut = 0
        self.lost_replies = 0
        self.doomed = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, **faults: Any) -> None:
        """Replace the faults in force (none given: heal)."""
        self.faults = replace(Faults(), **faults)
        self.doomed = 0

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            _reset(writer)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.faults.refuse:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        self._writers.update((writer, up_writer))
        doomed = asyncio.Event()  # set when this connection's next reply is to be lost
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, writer, doomed, upstream=True),
                self._pipe(up_reader, writer, up_writer, doomed, upstream=False),
            )
        finally:
            for each in (writer, up_writer):
                self._writers.discard(each)
                with contextlib.suppress(Exception):
                    each.close()

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
        doomed: asyncio.Event,
        *,
        upstream: bool,
    ) -> None:
        sent = 0
        try:
            while data := await source.read(CHUNK):
                faults = self.faults
                if faults.stall:
                    while self.faults.stall:
                        await asyncio.sleep(0.05)
                    # a black hole: what it swallowed is lost, and so is the connection
                    _reset(sink)
                    _reset(other)
                    return
                if faults.latency:
                    await asyncio.sleep(faults.latency)
                cut_at = faults.cut_after if upstream else faults.cut_reply_after
                if cut_at is not None and sent + len(data) > cut_at:
                    self.cut += 1
                    _reset(sink)
                    _reset(other)
                    return
                if (
                    upstream
                    and faults.lose_reply_to
                    and faults.lose_reply_to in data
                    and (faults.lose_limit is None or self.doomed < faults.lose_limit)
                ):
                    self.doomed += 1
                    doomed.set()
                if not upstream and doomed.is_set():
                    self.lost_replies += 1
                    _reset(sink)
                    _reset(other)
                    return
                sink.write(data)
                sent += len(data)
                await sink.drain()
                if faults.rate:
                    await asyncio.sleep(len(data) / faults.rate)
            if sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError):
            _reset(other)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a dropped connection would."""
    sock: socket.socket | None = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
