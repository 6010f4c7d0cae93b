"""gateway.pacing: only the time spent waiting for the client counts against it."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.errors import RequestTimeout
from gateway.pacing import paced


async def client(pieces: list[tuple[float, bytes]]) -> AsyncIterator[bytes]:
    for pause, data in pieces:
        await asyncio.sleep(pause)
        yield data


async def drain(chunks: AsyncIterator[bytes], consumer_pause: float = 0) -> bytes:
    received = b""
    async for chunk in chunks:
        received += chunk
        await asyncio.sleep(consumer_pause)
    return received


async def test_a_prompt_client_passes() -> None:
    body = await drain(paced(client([(0, b"a" * 10)] * 5), 0.2, 10))
    assert body == b"a" * 50


async def test_a_slow_consumer_is_not_the_clients_fault() -> None:
    # storage takes 3 windows per chunk; the client is never waited for
    body = await drain(paced(client([(0, b"x")] * 3), 0.1, 1), consumer_pause=0.3)
    assert body == b"xxx"


async def test_a_stalled_client_times_out() -> None:
    with pytest.raises(RequestTimeout):
        await drain(paced(client([(0, b"x"), (5, b"y")]), 0.2, 1))


async def test_a_crawling_client_times_out() -> None:
    # a byte every 0.05 s is never idle for a whole window, but brings 4 bytes, not 10
    with pytest.raises(RequestTimeout):
        await drain(paced(client([(0.05, b"x")] * 40), 0.2, 10))


async def test_progress_opens_a_new_window() -> None:
    # 10 bytes each 0.15 s: every window of 0.2 s sees its 10 bytes
    body = await drain(paced(client([(0.15, b"y" * 10)] * 6), 0.2, 10))
    assert len(body) == 60


async def test_another_cancellation_is_not_a_timeout() -> None:
    task = asyncio.create_task(drain(paced(client([(5, b"x")]), 0.2, 1)))
    await asyncio.sleep(0)  # the task now waits for the client
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
