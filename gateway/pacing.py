"""How long an upload may keep the gateway waiting for its body.

A client that stops sending (or sends a byte a second, a slow loris) would otherwise hold
its connection, its temporary file or multipart upload, and its part buffer for ever. The
body must bring at least `min_bytes` within every `window` seconds spent waiting for it;
else RequestTimeout (408) ends the request, whose upload is then cleaned up as for a
client that went away.

Only the time spent waiting for the client counts: while storage is slow to take a chunk,
the client is held back by TCP flow control, and that is not its fault.

Uploads arrive at about 1 GB/s, so nothing here costs a timer per chunk: one timer per
window checks the time waited so far, and a chunk only reads the clock twice.
"""

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import TypeVar

from .errors import RequestTimeout
from .storage.base import Buffer

B = TypeVar("B", bound=Buffer)


class _Watch:
    """The time spent waiting for the client since it last made enough progress."""

    def __init__(self, window: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.window = window
        self.waited = 0.0
        self.since: float | None = None  # when the current wait began
        self.timer: asyncio.TimerHandle | None = None
        self.expired = False

    def wait(self) -> None:
        self.since = self.loop.time()
        if self.timer is None:
            self.timer = self.loop.call_at(self.since + self.window - self.waited, self._check)

    def stop_waiting(self) -> None:
        if self.since is not None:
            self.waited += self.loop.time() - self.since
            self.since = None

    def progressed(self) -> None:
        self.waited = 0.0

    def _check(self) -> None:
        self.timer = None
        if self.since is None:
            return  # not waiting for the client now; the next wait arms the timer again
        now = self.loop.time()
        left = self.window - self.waited - (now - self.since)
        if left > 0:
            self.timer = self.loop.call_at(now + left, self._check)
        elif self.task is not None:
            self.expired = True
            self.task.cancel()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def paced(chunks: AsyncIterable[B], window: float, min_bytes: int) -> AsyncIterator[B]:
    """Pass `chunks` on; raise RequestTimeout when, in `window` seconds spent waiting for
    them, fewer than `min_bytes` (at least one) arrived."""
    source = aiter(chunks)
    watch = _Watch(window)
    received = 0
    try:
        while True:
            watch.wait()
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if watch.expired and watch.task is not None and watch.task.uncancel() == 0:
                    raise RequestTimeout(
                        f"The request body arrived too slowly: less than {min_bytes} bytes"
                        f" in {window:g} s."
                    ) from None
                raise
            finally:
                watch.stop_waiting()
            received += len(chunk)
            if received >= min_bytes:
                received = 0
                watch.progressed()
            yield chunk
            del chunk  # not held while the next one is awaited
    finally:
        watch.close()
