"""Calls run in worker threads one after another, in order, queued without waiting.

An upload hands each batch to two threads, one hashing it and one writing it, while the
event loop receives the next. Waiting for both before handing over the next batch makes
the three take turns: whenever one of them is late (a slow write, a descheduled thread),
the others idle. A lane queues the calls instead, so that a stage can fall a batch or
two behind and catch up, and runs them in order in one thread at a time. It holds no
thread while its queue is empty, so any number of uploads share a small pool.

BackgroundHashes is the same for a stream that is only hashed on its way (a resumable
upload's chunks on S3, which go out as parts).
"""

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .base import Buffer

if TYPE_CHECKING:
    from hashlib import _Hash

A = TypeVar("A")
R = TypeVar("R")


class Lane(Generic[A, R]):
    """Runs `call(argument)` for each `submit`, in order, in threads of `executor` (the
    loop's default executor for None).

    Once a call fails, later ones are not run: their futures end with the same error (a
    writer must not write past a batch it failed to write).

    `put` is how a stream uses it: at most `queued` calls wait or run, `put` waits for
    the oldest when they do, and `drain` waits for them all; either raises the first
    error. `settle`, in a `finally`, waits until no thread runs a call any more."""

    def __init__(self, executor: Executor | None, call: Callable[[A], R], queued: int = 2):
        self._executor = executor
        self._call = call
        self._loop = asyncio.get_running_loop()
        self._queue: deque[tuple[A, asyncio.Future[R]]] = deque()
        self._lock = threading.Lock()
        self._draining = False
        self._failed: BaseException | None = None
        self.queued = queued
        self._pending: deque[asyncio.Future[R]] = deque()  # what `put` handed over

    async def put(self, argument: A) -> None:
        while len(self._pending) >= self.queued:
            await self._oldest()
        self._pending.append(self.submit(argument))

    async def drain(self) -> None:
        while self._pending:
            await self._oldest()

    async def settle(self) -> None:
        for future in self._pending:
            await settled(future)

    async def _oldest(self) -> None:
        # shielded: a cancelled request must not cancel the future of a call that runs
        await asyncio.shield(self._pending[0])
        self._pending.popleft()

    def submit(self, argument: A) -> "asyncio.Future[R]":
        future: asyncio.Future[R] = self._loop.create_future()
        with self._lock:
            self._queue.append((argument, future))
            if self._draining:
                return future
            self._draining = True
        try:
            if self._executor is None:
                self._loop.run_in_executor(None, self._drain)
            else:
                self._executor.submit(self._drain)
        except BaseException:
            with self._lock:
                self._queue.clear()
                self._draining = False
            raise
        return future

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return
                argument, future = self._queue.popleft()
            outcome: tuple[bool, Any]
            if self._failed is not None:
                outcome = (False, self._failed)
            else:
                try:
                    outcome = (True, self._call(argument))
                except BaseException as exc:
                    self._failed = exc
                    outcome = (False, exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(_resolve, future, outcome)


def _resolve(future: "asyncio.Future[Any]", outcome: tuple[bool, Any]) -> None:
    if future.cancelled():
        return
    succeeded, value = outcome
    if succeeded:
        future.set_result(value)
    else:
        future.set_exception(value)


async def settled(future: "asyncio.Future[Any]") -> None:
    """Wait until `future` is done, whatever it ends with and however often the waiting
    task is cancelled meanwhile."""
    while not future.done():
        with contextlib.suppress(BaseException):
            await asyncio.shield(future)
    if not future.cancelled():
        future.exception()  # retrieved: the caller tells the first error, not this one


class BackgroundHashes:
    """Feeds a stream's chunks to hashes in a worker thread, a batch at a time and in
    order, while the event loop goes on receiving (hashlib releases the GIL). At most
    QUEUED batches wait for the thread; `add` waits when they do.

        hashing = BackgroundHashes([sha256])
        try:
            async for chunk in chunks:
                await hashing.add(chunk)
            await hashing.done()      # sha256 now holds every chunk
        finally:
            await hashing.settle()    # no thread touches the hashes any more
    """

    BATCH = 512 * 1024
    QUEUED = 2

    def __init__(self, hashes: "Sequence[_Hash]", executor: Executor | None = None):
        self.hashes = list(hashes)
        self._lane: Lane[list[Buffer], None] = Lane(executor, self._update, self.QUEUED)
        self._batch: list[Buffer] = []
        self._held = 0

    def _update(self, chunks: list[Buffer]) -> None:
        for chunk in chunks:
            for hasher in self.hashes:
                hasher.update(chunk)

    async def add(self, chunk: Buffer) -> None:
        if not self.hashes:
            return
        self._batch.append(chunk)
        self._held += len(chunk)
        if self._held >= self.BATCH:
            await self._submit()

    async def _submit(self) -> None:
        batch, self._batch, self._held = self._batch, [], 0
        await self._lane.put(batch)

    async def done(self) -> None:
        """Wait until every chunk added so far is hashed."""
        if self._batch:
            await self._submit()
        await self._lane.drain()

    async def settle(self) -> None:
        await self._lane.settle()
