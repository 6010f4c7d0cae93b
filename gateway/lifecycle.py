"""Where the process stands: serving or draining, and how many requests are in flight.

Shutdown, as `gateway serve` runs it (uvicorn does the middle part):

    SIGTERM ─► draining: /readyz answers 503, so load balancers stop sending new requests;
               requests keep being served for `shutdown_drain`
            ─► the listening socket closes; requests in flight get `shutdown_grace` to end
            ─► those still running are cancelled, and clean up as if their client had gone
               (temporary files removed, multipart uploads aborted); the app waits for that
               before the storage closes.

A second SIGTERM or SIGINT skips what is left of the drain.
"""

import asyncio
import contextvars
import functools
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("gateway")

SignalHandler = Callable[[int, FrameType | None], Any]


class Lifecycle:
    def __init__(self, drain: float = 0) -> None:
        self.drain = drain
        self.draining = False
        self._passed_on = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def request_started(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def request_ended(self) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no request is in flight (bound it with asyncio.timeout)."""
        await self._idle.wait()

    def watch_signals(self) -> Callable[[], None]:
        """Step in front of the server's own SIGTERM and SIGINT handlers (uvicorn installs
        them before the app starts). Returns what puts them back."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        replaced: dict[int, SignalHandler] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            handler = signal.getsignal(sig)
            if callable(handler):
                replaced[sig] = handler
                signal.signal(sig, functools.partial(self._on_signal, loop, handler))

        def restore() -> None:
            for sig, handler in replaced.items():
                signal.signal(sig, handler)

        return restore

    def _on_signal(
        self,
        loop: asyncio.AbstractEventLoop,
        server_handler: SignalHandler,
        sig: int,
        frame: FrameType | None,
    ) -> None:
        first = not self.draining
        self.draining = True
        if first and self.drain > 0:
            # A signal handler may run in the middle of the event loop's own code: hand the
            # rest to the loop the one way that is safe from here, outside any request's
            # context (whose request id the log line would otherwise carry).
            loop.call_soon_threadsafe(
                self._drain_then, loop, server_handler, sig, context=contextvars.Context()
            )
        else:
            self._passed_on = True
            server_handler(sig, frame)

    def _drain_then(
        self, loop: asyncio.AbstractEventLoop, server_handler: SignalHandler, sig: int
    ) -> None:
        log.info("Draining for %gs: /readyz now answers 503", self.drain)
        loop.call_later(self.drain, self._pass_on, server_handler, sig)

    def _pass_on(self, server_handler: SignalHandler, sig: int) -> None:
        if not self._passed_on:  # else a second signal already did
            self._passed_on = True
            server_handler(sig, None)
