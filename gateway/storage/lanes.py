"""Calls run in worker threads one after another, in order, queued without waiting.

An upload hands each batch to two threads, one hashing it and one writing it, while the
event loop receives the next. Waiting for both before handing over the next batch makes
the three take turns: whenever one of them is late (a slow write, a descheduled thread),
the others idle. A lane queues the calls instead, so that a stage can fall a batch or
two behind and catch up, and runs them in order in one thread at a time. It holds no
thread while its queue is empty, so any number of uploads share a small pool.
"""

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class Lane(Generic[A, R]):
    """Runs `call(argument)` for each `submit`, in order, in threads of `executor`.

    Once a call fails, later ones are not run: their futures end with the same error (a
    writer must not write past a batch it failed to write)."""

    def __init__(self, executor: Executor, call: Callable[[A], R]):
        self._executor = executor
        self._call = call
        self._loop = asyncio.get_running_loop()
        self._queue: deque[tuple[A, asyncio.Future[R]]] = deque()
        self._lock = threading.Lock()
        self._draining = False
        self._failed: BaseException | None = None

    def submit(self, argument: A) -> "asyncio.Future[R]":
        future: asyncio.Future[R] = self._loop.create_future()
        with self._lock:
            self._queue.append((argument, future))
            if self._draining:
                return future
            self._draining = True
        try:
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
