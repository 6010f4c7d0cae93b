"""What is particular to the local backend: paths, the sweep, and files left behind."""

import asyncio
import fcntl
import os
import sqlite3
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import Forbidden, InvalidKey
from gateway.intake import limited
from gateway.keys import decode_path_key, validate_key
from gateway.pacing import paced
from gateway.storage.base import Buffer, UploadSpec, UploadState, WriteSpec
from gateway.storage.local import QUEUED, WRITE_MAX, LocalStorage
from gateway.storage.local_uploads import LocalUploads
from gateway.storage.locking import open_locked
from tests.conftest import blob_files, tmp_files

KEY_ALPHABET = st.sampled_from(["/", ".", "..", "\\", "a", "é", "\x00", "\n", "%2F", "~", " "])
KEYS = st.one_of(st.text(max_size=60), st.lists(KEY_ALPHABET, max_size=12).map("".join))


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*")}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(key=KEYS)
def test_no_key_reaches_outside_the_data_folder(tmp_path: Path, key: str) -> None:
    data_dir = tmp_path / "data"
    before = files_under(tmp_path)
    try:
        validate_key(key)
    except InvalidKey:
        return

    async def store_and_read() -> bytes:
        async with LocalStorage(data_dir) as storage:
            await storage.put(key, one_chunk(b"payload"), WriteSpec())
            reader = await storage.open(key)
            async with reader:
                return b"".join([chunk async for chunk in reader.chunks()])

    assert asyncio.run(store_and_read()) == b"payload"
    created = files_under(tmp_path) - before
    assert all(path.resolve().is_relative_to(data_dir.resolve()) for path in created)


@given(raw=st.binary(max_size=40))
def test_decoded_path_keys_are_always_valid(raw: bytes) -> None:
    try:
        key = decode_path_key(raw)
    except InvalidKey:
        return
    assert validate_key(key) == key
    assert ".." not in key.split("/") and not key.startswith("/")


async def test_blobs_are_named_by_id_not_key(tmp_path: Path) -> None:
    async with LocalStorage(tmp_path) as storage:
        await storage.put("../../etc/passwd-lookalike", one_chunk(b"x"), WriteSpec())
    [blob] = blob_files(tmp_path)
    assert blob.parent.parent == tmp_path / "blobs" and "passwd" not in str(blob)


async def test_sweep_removes_abandoned_uploads_and_keeps_live_ones(tmp_path: Path) -> None:
    async with LocalStorage(tmp_path):
        pass
    abandoned = tmp_path / "tmp" / "0"
    abandoned.write_bytes(b"left by a killed writer")
    live = tmp_path / "tmp" / "1"
    live.write_bytes(b"still being written")
    with live.open("rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # as a writer in another process holds it
        async with LocalStorage(tmp_path) as storage:
            assert tmp_files(tmp_path) == ["1"]
            assert (await storage.list()).objects == []


async def test_sweep_finishes_a_commit_cut_short(tmp_path: Path) -> None:
    """A crash between the index commit and the rename into blobs/: the object survives."""
    async with LocalStorage(tmp_path) as storage:
        info = await storage.put("k", one_chunk(b"committed"), WriteSpec())
    [blob] = blob_files(tmp_path)
    blob.rename(tmp_path / "tmp" / blob.name)  # as if the rename had not happened yet
    async with LocalStorage(tmp_path) as storage:
        assert tmp_files(tmp_path) == []
        assert blob_files(tmp_path) == [blob]
        reader = await storage.open("k")
        async with reader:
            assert b"".join([c async for c in reader.chunks()]) == b"committed"
            assert reader.info == info


async def test_sweep_removes_recorded_garbage(tmp_path: Path) -> None:
    async with LocalStorage(tmp_path):
        pass
    orphan = tmp_path / "blobs" / "ab" / "abcdef"
    orphan.parent.mkdir()
    orphan.write_bytes(b"replaced, and the process died before removing it")
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        db.execute("INSERT INTO garbage (blob) VALUES ('abcdef')")
    async with LocalStorage(tmp_path):
        assert not orphan.exists()
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM garbage").fetchone() == (0,)


async def test_replaced_and_deleted_blobs_are_removed(tmp_path: Path) -> None:
    async with LocalStorage(tmp_path) as storage:
        for n in range(3):
            await storage.put("k", one_chunk(bytes([n]) * 10), WriteSpec())
        assert len(blob_files(tmp_path)) == 1
        await storage.delete("k")
        assert blob_files(tmp_path) == [] and tmp_files(tmp_path) == []


async def test_a_reader_keeps_its_version_while_the_key_is_replaced(tmp_path: Path) -> None:
    async with LocalStorage(tmp_path) as storage:
        await storage.put("k", one_chunk(b"A" * 3_000_000), WriteSpec())
        reader = await storage.open("k")
        await storage.put("k", one_chunk(b"B" * 10), WriteSpec())
        async with reader:
            assert b"".join([c async for c in reader.chunks()]) == b"A" * 3_000_000
        assert (await storage.stat("k")).size == 10


async def test_a_cancelled_write_waits_for_its_threads(tmp_path: Path) -> None:
    """However often the request is cancelled, the write returns only once no worker thread
    uses the file any more: its descriptor is closed right after."""
    entered, release = threading.Event(), threading.Event()
    hashed: list[int] = []

    class SlowHasher:
        def update(self, chunks: Sequence[Buffer]) -> None:
            entered.set()
            release.wait(10)
            hashed.append(sum(len(chunk) for chunk in chunks))

    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):  # more batches than may wait for the hashing thread
            yield os.urandom(WRITE_MAX)
        await asyncio.Event().wait()  # a client that stalls
        yield b""

    async with LocalStorage(tmp_path) as storage:
        fd = os.open(tmp_path / "file", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            task = asyncio.create_task(storage._write(fd, body(), SlowHasher()))
            await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
            for _ in range(3):
                task.cancel()
                done, _pending = await asyncio.wait({task}, timeout=0.1)
                assert not done  # still waiting for the hashing thread
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the batches handed over were hashed and written whole; no more were
            assert hashed == [WRITE_MAX] * QUEUED
            assert os.fstat(fd).st_size == QUEUED * WRITE_MAX
        finally:
            os.close(fd)


async def test_cancelled_upload_leaves_nothing(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield os.urandom(2_000_000)
        started.set()
        await asyncio.Event().wait()  # a client that stalls
        yield b""

    async with LocalStorage(tmp_path) as storage:
        task = asyncio.create_task(storage.put("k", slow(), WriteSpec()))
        await started.wait()
        assert len(tmp_files(tmp_path)) == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert tmp_files(tmp_path) == []
        assert (await storage.list()).objects == []


class _Chunk(bytearray):
    """A chunk whose end a test can watch (bytearray subclasses take weak references)."""


async def test_a_written_chunk_is_let_go_before_the_next_arrives(tmp_path: Path) -> None:
    """Once a chunk is hashed and written, nothing on its way (the size limit, the body
    timeout, the batching) holds it while the next one is awaited: an upload's memory is
    the chunks in flight, not one more."""
    refs: list[weakref.ref[_Chunk]] = []
    proceed = asyncio.Event()

    async def source() -> AsyncIterator[Buffer]:
        chunk = _Chunk(os.urandom(WRITE_MAX))
        refs.append(weakref.ref(chunk))
        yield chunk
        del chunk
        await proceed.wait()
        yield b"the rest"

    async def released() -> None:
        while not refs or refs[0]() is not None:
            await asyncio.sleep(0.01)
        proceed.set()

    body = paced(limited(source(), 10 * WRITE_MAX), window=30, min_bytes=1)
    async with LocalStorage(tmp_path) as storage:
        watcher = asyncio.create_task(asyncio.wait_for(released(), 10))
        info = await storage.put("k", body, WriteSpec())
        await watcher  # TimeoutError if the first chunk was still held
    assert info.size == WRITE_MAX + len(b"the rest")


# --- resumable uploads: the lock on an upload ----------------------------------------------


def upload_spec(length: int) -> UploadSpec:
    return UploadSpec(
        id=uuid.uuid4().hex,
        key="locked.bin",
        length=length,
        metadata={},
        content_type="application/octet-stream",
        filename=None,
    )


def try_lock(path: Path) -> bool:
    try:
        fd = open_locked(path, os.O_WRONLY)
    except BlockingIOError:
        return False
    assert fd is not None
    os.close(fd)
    return True


async def test_a_request_is_judged_before_it_takes_the_upload(tmp_path: Path) -> None:
    """A request refused on the upload's state (another tenant's) never holds the upload's
    lock, not even while it is judged: it could otherwise keep the owner's requests busy."""
    async with LocalStorage(tmp_path / "data") as storage:
        uploads = storage.uploads
        assert isinstance(uploads, LocalUploads)
        state = await uploads.create(upload_spec(10))
        free_while_judged = []

        def admit(judged: UploadState) -> None:
            free_while_judged.append(try_lock(uploads._data(judged.id)))
            raise Forbidden("Not this tenant's upload.")

        with pytest.raises(Forbidden):
            await uploads.append(state.id, 0, one_chunk(b"x"), admit=admit)
        assert free_while_judged == [True]
        assert (await uploads.info(state.id)).offset == 0


async def test_a_request_cancelled_while_it_takes_the_upload_lets_it_go(tmp_path: Path) -> None:
    """Cancelled while its worker thread locks the upload, a request does not keep the lock
    (the upload would answer 423 until the process ends)."""
    async with LocalStorage(tmp_path / "data") as storage:
        uploads = storage.uploads
        assert isinstance(uploads, LocalUploads)
        state = await uploads.create(upload_spec(10))
        judged, go_on = threading.Event(), threading.Event()

        def admit(_: UploadState) -> None:
            judged.set()
            go_on.wait(10)

        request = asyncio.create_task(uploads.append(state.id, 0, one_chunk(b"x"), admit=admit))
        assert await asyncio.to_thread(judged.wait, 10)
        request.cancel()
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await request
        # the thread goes on and locks the upload: once it is done, the lock is let go
        await asyncio.to_thread(storage._io.shutdown, True)
        async with asyncio.timeout(10):
            while not try_lock(uploads._data(state.id)):
                await asyncio.sleep(0.01)
