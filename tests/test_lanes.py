"""Lanes (gateway.storage.lanes): calls queued without waiting run in order, one at a time,
stop at the first failure, and hold no worker thread while they have nothing to do."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from gateway.storage.lanes import Lane


async def test_calls_run_in_order_one_at_a_time() -> None:
    seen: list[int] = []
    running = 0
    overlapped = False
    guard = threading.Lock()

    def call(n: int) -> int:
        nonlocal running, overlapped
        with guard:
            running += 1
            overlapped |= running > 1
        seen.append(n)
        with guard:
            running -= 1
        return n * 2

    with ThreadPoolExecutor(8) as pool:
        lane: Lane[int, int] = Lane(pool, call)
        futures = [lane.submit(n) for n in range(500)]  # queued while the first ones run
        results = await asyncio.gather(*futures)
    assert seen == list(range(500))
    assert results == [n * 2 for n in range(500)]
    assert not overlapped


async def test_a_failure_stops_the_calls_after_it() -> None:
    ran: list[int] = []
    release = threading.Event()

    def call(n: int) -> None:
        if n == 0:
            release.wait(5)  # the later calls are all queued before the failure
        ran.append(n)
        if n == 1:
            raise OSError(28, "No space left on device")

    with ThreadPoolExecutor(2) as pool:
        lane: Lane[int, None] = Lane(pool, call)
        futures = [lane.submit(n) for n in range(4)]
        release.set()
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert ran == [0, 1]
    assert outcomes[0] is None
    assert all(isinstance(outcome, OSError) for outcome in outcomes[1:])
    assert outcomes[2] is outcomes[1] and outcomes[3] is outcomes[1]


async def test_idle_lanes_share_one_thread() -> None:
    """Two lanes on a pool of one thread both get their calls run, turn by turn: a lane
    whose queue is empty gives the thread back."""
    order: list[str] = []
    with ThreadPoolExecutor(1) as pool:
        first: Lane[str, None] = Lane(pool, order.append)
        second: Lane[str, None] = Lane(pool, order.append)
        for n in range(3):
            await first.submit(f"a{n}")
            await second.submit(f"b{n}")
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]


async def test_a_cancelled_wait_leaves_the_call_running() -> None:
    """The caller may stop waiting (its request was cancelled); the call still runs to its
    end, and the lane goes on with the next one."""
    started, release = threading.Event(), threading.Event()
    done: list[int] = []

    def call(n: int) -> None:
        if n == 0:
            started.set()
            release.wait(5)
        done.append(n)

    with ThreadPoolExecutor(2) as pool:
        lane: Lane[int, None] = Lane(pool, call)
        first = lane.submit(0)
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        release.set()
        await lane.submit(1)
    assert done == [0, 1]
