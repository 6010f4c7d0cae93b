"""The storage contract: every backend passes this suite unchanged (see the `storage` fixture)."""

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator

import pytest

from gateway.errors import (
    BadRequest,
    ChecksumMismatch,
    NotFound,
    PreconditionFailed,
    RangeNotSatisfiable,
)
from gateway.ranges import RangeSpec
from gateway.storage.base import Storage, WriteSpec, etag_for


async def chunks_of(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def failing_after(data: bytes, exc: BaseException) -> AsyncIterator[bytes]:
    yield data
    raise exc


async def read(storage: Storage, key: str, spec: RangeSpec | None = None) -> bytes:
    reader = await storage.open(key, spec)
    try:
        return b"".join([chunk async for chunk in reader.chunks()])
    finally:
        await reader.aclose()


async def keys(storage: Storage, prefix: str = "") -> list[str]:
    listing = await storage.list(prefix)
    return [info.key for info in listing.objects]


async def test_put_then_read_back(storage: Storage) -> None:
    data = os.urandom(300_000)
    spec = WriteSpec(content_type="image/png", filename="cat.png", metadata={"owner": "ann"})
    info = await storage.put("pets/cat.png", chunks_of(data), spec)
    digest = hashlib.sha256(data).hexdigest()
    assert (info.key, info.size, info.sha256, info.etag) == (
        "pets/cat.png",
        len(data),
        digest,
        etag_for(digest),
    )
    assert (info.content_type, info.filename, dict(info.metadata)) == (
        "image/png",
        "cat.png",
        {"owner": "ann"},
    )
    assert await read(storage, "pets/cat.png") == data
    stat = await storage.stat("pets/cat.png")
    assert stat == info


async def test_empty_object(storage: Storage) -> None:
    info = await storage.put("empty", chunks_of(b""), WriteSpec())
    assert info.size == 0 and info.sha256 == hashlib.sha256(b"").hexdigest()
    assert await read(storage, "empty") == b""


async def test_replace_keeps_one_whole_version(storage: Storage) -> None:
    await storage.put("k", chunks_of(b"old" * 1000), WriteSpec())
    await storage.put("k", chunks_of(b"new!" * 500), WriteSpec())
    assert await read(storage, "k") == b"new!" * 500
    assert await keys(storage) == ["k"]


async def test_ranges(storage: Storage) -> None:
    data = bytes(range(256)) * 40
    await storage.put("r", chunks_of(data), WriteSpec())
    assert await read(storage, "r", RangeSpec(10, 19)) == data[10:20]
    assert await read(storage, "r", RangeSpec(10_000, None)) == data[10_000:]
    assert await read(storage, "r", RangeSpec(None, 7)) == data[-7:]
    assert await read(storage, "r", RangeSpec(0, 10**9)) == data
    reader = await storage.open("r", RangeSpec(5, 9))
    assert reader.range is not None and reader.range.content_range == f"bytes 5-9/{len(data)}"
    await reader.aclose()
    with pytest.raises(RangeNotSatisfiable):
        await storage.open("r", RangeSpec(len(data), None))


async def test_missing_objects(storage: Storage) -> None:
    for call in (storage.stat("nope"), storage.open("nope"), storage.delete("nope")):
        with pytest.raises(NotFound):
            await call


async def test_delete(storage: Storage) -> None:
    await storage.put("d", chunks_of(b"x"), WriteSpec())
    await storage.delete("d")
    with pytest.raises(NotFound):
        await storage.stat("d")
    assert await keys(storage) == []


async def test_a_and_a_slash_b_coexist(storage: Storage) -> None:
    await storage.put("a", chunks_of(b"A"), WriteSpec())
    await storage.put("a/b", chunks_of(b"B"), WriteSpec())
    await storage.put("a/b/c", chunks_of(b"C"), WriteSpec())
    assert [await read(storage, key) for key in ("a", "a/b", "a/b/c")] == [b"A", b"B", b"C"]
    await storage.delete("a/b")
    assert await keys(storage) == ["a", "a/b/c"]


async def test_create_only(storage: Storage) -> None:
    await storage.put("once", chunks_of(b"first"), WriteSpec(create_only=True))
    with pytest.raises(PreconditionFailed):
        await storage.put("once", chunks_of(b"second"), WriteSpec(create_only=True))
    assert await read(storage, "once") == b"first"


async def test_racing_creators_one_wins(storage: Storage) -> None:
    spec = WriteSpec(create_only=True)
    results = await asyncio.gather(
        *(storage.put("race", chunks_of(bytes([n]) * 100_000), spec) for n in range(6)),
        return_exceptions=True,
    )
    winners = [result for result in results if not isinstance(result, BaseException)]
    assert len(winners) == 1
    assert all(
        isinstance(result, PreconditionFailed)
        for result in results
        if isinstance(result, BaseException)
    )
    data = await read(storage, "race")
    assert hashlib.sha256(data).hexdigest() == winners[0].sha256
    assert data in [bytes([n]) * 100_000 for n in range(6)]


async def test_concurrent_writers_never_mix(storage: Storage) -> None:
    bodies = [bytes([n]) * 700_000 for n in range(5)]
    await asyncio.gather(
        *(storage.put("same", chunks_of(body, 50_000), WriteSpec()) for body in bodies)
    )
    assert await read(storage, "same") in bodies


async def test_checksums_are_verified(storage: Storage) -> None:
    data = os.urandom(10_000)
    good = WriteSpec(
        expect_md5=hashlib.md5(data).digest(), expect_sha256=hashlib.sha256(data).hexdigest()
    )
    assert (await storage.put("ok", chunks_of(data), good)).size == len(data)
    for bad in (
        WriteSpec(expect_md5=hashlib.md5(b"other").digest()),
        WriteSpec(expect_sha256=hashlib.sha256(b"other").hexdigest()),
    ):
        with pytest.raises(ChecksumMismatch):
            await storage.put("bad", chunks_of(data), bad)
    assert await keys(storage) == ["ok"]
    assert base64.b64encode(hashlib.md5(data).digest())  # the header form clients send


async def test_a_failing_body_stores_nothing(storage: Storage) -> None:
    await storage.put("keep", chunks_of(b"previous"), WriteSpec())
    for exc in (ConnectionResetError("client gone"), asyncio.CancelledError()):
        with pytest.raises(type(exc)):
            await storage.put("keep", failing_after(os.urandom(200_000), exc), WriteSpec())
        with pytest.raises(type(exc)):
            await storage.put("new", failing_after(b"x", exc), WriteSpec())
    assert await keys(storage) == ["keep"]
    assert await read(storage, "keep") == b"previous"


async def test_staged_objects_are_invisible_until_committed(storage: Storage) -> None:
    staged = await storage.stage("st", chunks_of(b"data"), WriteSpec())
    assert staged.info.size == 4
    with pytest.raises(NotFound):
        await storage.stat("st")
    info = await staged.commit()
    assert info.key == "st" and await read(storage, "st") == b"data"
    discarded = await storage.stage("gone", chunks_of(b"data"), WriteSpec())
    await discarded.discard()
    await discarded.discard()  # idempotent
    assert await keys(storage) == ["st"]


async def test_reader_closed_early(storage: Storage) -> None:
    await storage.put("big", chunks_of(os.urandom(5_000_000)), WriteSpec())
    for _ in range(20):  # a backend that leaks a connection or a file per reader fails here
        reader = await storage.open("big")
        async for _chunk in reader.chunks():
            break
        await reader.aclose()
    assert len(await read(storage, "big")) == 5_000_000


async def test_listing_order_prefix_and_pagination(storage: Storage) -> None:
    names = ["b", "a/1", "a/2", "a-c", "a", "é", "z", "\U0001f600", "ab", "a/sub/x"]
    for name in names:
        await storage.put(name, chunks_of(name.encode()), WriteSpec())
    utf8_order = sorted(names, key=lambda k: k.encode())
    assert await keys(storage) == utf8_order
    assert await keys(storage, "a/") == ["a/1", "a/2", "a/sub/x"]
    seen: list[str] = []
    cursor = None
    while True:
        page = await storage.list(limit=3, cursor=cursor)
        assert len(page.objects) <= 3
        seen += [info.key for info in page.objects]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == utf8_order


async def test_listing_with_delimiter(storage: Storage) -> None:
    for name in ["a", "a/1", "a/2", "a/sub/x", "a-c", "b/1", "c"]:
        await storage.put(name, chunks_of(b"."), WriteSpec())
    top = await storage.list(delimiter="/")
    assert [info.key for info in top.objects] == ["a", "a-c", "c"]
    assert top.prefixes == ["a/", "b/"]
    inner = await storage.list(prefix="a/", delimiter="/")
    assert [info.key for info in inner.objects] == ["a/1", "a/2"]
    assert inner.prefixes == ["a/sub/"]
    # pagination counts prefixes and objects alike, and never repeats a prefix
    entries: list[str] = []
    cursor = None
    while True:
        page = await storage.list(delimiter="/", limit=1, cursor=cursor)
        entries += [info.key for info in page.objects] + page.prefixes
        cursor = page.next_cursor
        if cursor is None:
            break
    assert entries == ["a", "a-c", "a/", "b/", "c"]


async def test_listing_rejects_foreign_cursors(storage: Storage) -> None:
    await storage.put("x", chunks_of(b"."), WriteSpec())
    with pytest.raises(BadRequest):
        await storage.list(cursor="%%% not a cursor %%%")
    # well-formed base64, but not a cursor the backend gave out (moto answered S3's
    # ContinuationToken with a 500, which became a 502)
    for forged in ("0" * 4096, "MDAw", "YWJj"):
        with pytest.raises(BadRequest):
            await storage.list(cursor=forged)


async def test_check(storage: Storage) -> None:
    await storage.check()
