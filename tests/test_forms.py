"""A form stores all its files or none (gateway.routes.forms), even when the request is
cancelled while the files that went through are being taken back."""

import asyncio
from datetime import UTC, datetime

import pytest

from gateway.errors import BackendError
from gateway.routes.forms import _commit_all
from gateway.storage.base import ObjectInfo, Staged, Storage


def info(key: str) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=1,
        etag='"e"',
        sha256="",
        content_type="text/plain",
        last_modified=datetime.now(UTC),
    )


class Item(Staged):
    def __init__(self, key: str, log: list[str], events: dict[str, asyncio.Event], fails: bool):
        self.info, self.log, self.events, self.fails = info(key), log, events, fails

    async def commit(self) -> ObjectInfo:
        if self.fails:
            raise BackendError()
        self.log.append(f"commit {self.info.key}")
        return self.info

    async def discard(self) -> None:
        self.log.append(f"discarding {self.info.key}")
        self.events["discarding"].set()
        await self.events["gate"].wait()  # S3 slow to abort
        self.log.append(f"discarded {self.info.key}")


class Deleting:
    def __init__(self, log: list[str], events: dict[str, asyncio.Event]):
        self.log, self.events = log, events

    async def delete(self, key: str) -> None:
        self.log.append(f"delete {key}")
        self.events["deleted"].set()


async def test_a_cancelled_take_back_still_takes_everything_back() -> None:
    log: list[str] = []
    events = {name: asyncio.Event() for name in ("discarding", "gate", "deleted")}
    staged: list[Staged] = [
        Item("a", log, events, fails=False),
        Item("b", log, events, fails=True),
        Item("c", log, events, fails=False),
    ]
    storage: Storage = Deleting(log, events)  # type: ignore[assignment]
    task = asyncio.create_task(_commit_all(storage, staged))
    await events["discarding"].wait()  # the take-back has begun, and waits on S3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    events["gate"].set()
    await asyncio.wait_for(events["deleted"].wait(), 10)  # it went on by itself
    assert log == [
        "commit a",
        "discarding b",
        "discarded b",
        "discarding c",
        "discarded c",
        "delete a",
    ]
