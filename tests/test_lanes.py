"""Lanes (gateway.storage.lanes): calls queued without waiting run in order, one at a time,
stop at the first failure, and hold no worker thread while they have nothing to do; a
stream hashed in the background sees every chunk in order; batches keep what arrived."""

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.digests import batched
from gateway.errors import TooLarge
from gateway.storage.lanes import BackgroundHashes, Lane


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
        queued = [first.submit(f"a{n}") for n in range(3)]
        queued += [second.submit(f"b{n}") for n in range(3)]
        # a lane that kept the only thread would leave the other's calls waiting for ever
        await asyncio.wait_for(asyncio.gather(*queued), 10)
        # idle now, each gets the thread again
        await asyncio.wait_for(asyncio.gather(second.submit("b3"), first.submit("a3")), 10)
    assert order == ["a0", "a1", "a2", "b0", "b1", "b2", "b3", "a3"]


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


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 300_000), max_size=30))
async def test_background_hashes_see_every_chunk_in_order(sizes: list[int]) -> None:
    data = os.urandom(sum(sizes))
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    hashing = BackgroundHashes([sha256, md5])
    at = 0
    try:
        for size in sizes:
            await hashing.add(data[at : at + size])
            at += size
        await hashing.done()
    finally:
        await hashing.settle()
    assert sha256.digest() == hashlib.sha256(data).digest()
    assert md5.digest() == hashlib.md5(data).digest()


async def test_background_hashes_settle_after_a_cancellation() -> None:
    """A request cancelled while its batches wait for the thread still leaves no thread
    at work once `settle` returns."""
    release = threading.Event()
    fed: list[int] = []

    class Slow:
        def update(self, chunk: bytes) -> None:
            release.wait(10)
            fed.append(len(chunk))

    hashing = BackgroundHashes([Slow()])  # type: ignore[list-item]

    async def feed() -> None:
        for _ in range(10):
            await hashing.add(b"x" * BackgroundHashes.BATCH)

    task = asyncio.create_task(feed())
    done, _pending = await asyncio.wait({task}, timeout=0.1)
    assert not done  # held: QUEUED batches wait for the thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await hashing.settle()
    assert fed == [BackgroundHashes.BATCH] * BackgroundHashes.QUEUED


async def test_batches_keep_what_arrived_before_the_stream_broke_off() -> None:
    """A client gone mid-batch: the chunks gathered so far still reach the writer (a
    resumable upload keeps every byte that arrived), then the error."""

    async def broken() -> AsyncIterator[bytes]:
        yield b"a" * 300
        yield b"b" * 300
        yield b"c" * 100
        raise ConnectionResetError("client gone")

    got: list[list[bytes]] = []
    with pytest.raises(ConnectionResetError):
        async for batch in batched(broken(), lambda: 500, keep_on=(ConnectionError,)):
            got.append([bytes(chunk) for chunk in batch])
    assert got == [[b"a" * 300, b"b" * 300], [b"c" * 100]]


async def test_other_errors_keep_no_partial_batch() -> None:
    """A body refused (too large, say) is not a body broken off: its partial batch is
    not handed on, to be written and then taken back."""

    async def refused() -> AsyncIterator[bytes]:
        yield b"a" * 300
        raise TooLarge("too large")

    got = []
    with pytest.raises(TooLarge):
        async for batch in batched(refused(), lambda: 500, keep_on=(ConnectionError,)):
            got.append(batch)
    assert got == []


async def test_a_cancelled_stream_yields_nothing_more() -> None:
    async def cancelled() -> AsyncIterator[bytes]:
        yield b"a" * 100
        raise asyncio.CancelledError

    got = []
    with pytest.raises(asyncio.CancelledError):
        async for batch in batched(cancelled(), lambda: 500, keep_on=(ConnectionError,)):
            got.append(batch)
    assert got == []
