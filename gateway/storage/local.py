"""The local-disk backend.

Layout of the data folder:

    index.sqlite3       key -> blob id, size, SHA-256, content type, filename, metadata
    blobs/ab/abcd...    the bytes of each object, named by a random blob id
    tmp/abcd...         uploads in progress, each flock()ed by the process writing it

Keys never become paths: whatever a key holds, its bytes land in `blobs/` under a random
id, so no key can reach outside the folder, and `a` and `a/b` coexist.

An upload streams into `tmp/<id>` (a worker thread hashes and writes each batch while the
event loop receives the next), is fsynced, and then committed: one SQLite transaction
points the key at the blob, and the file is renamed into `blobs/`. A reader sees the old
row or the new one, and each names a whole file. A blob that a commit or delete replaced
is recorded as garbage in the same transaction and removed after it.

After a crash, `start()` sweeps: a tmp file that no live process holds locked is either
committed already (then it is moved into place) or not (then it is removed), and recorded
garbage is removed.
"""

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiofiles.os

from ..digests import Digests, Hasher, batched
from ..errors import BROKEN_OFF, BackendError, BackendUnavailable, NotFound
from ..ranges import ByteRange, RangeSpec, resolve_range
from ..settings import Settings
from .base import (
    Buffer,
    Chunks,
    Listing,
    ObjectInfo,
    ObjectReader,
    Staged,
    Storage,
    WriteSpec,
    etag_for,
)
from .cursor import decode_cursor, encode_cursor
from .direct import AlignedBuffers, Appender
from .lanes import Lane, settled
from .local_index import Index, Row
from .local_uploads import LocalUploads
from .locking import open_locked
from .writeback import start_writeback

T = TypeVar("T")

# Uploads hand their bytes to the hashing and writing threads in batches of 256 to 512 KiB
# (larger ones measured slower: the last batch of a request is waited for whole), and each
# of the two may fall QUEUED batches behind. A budget shrinks the batches as more uploads
# share the process (each holds up to QUEUED + 1 batches), so memory stays bounded.
WRITE_MIN, WRITE_MAX, WRITE_BUDGET = 256 * 1024, 512 * 1024, 8 * 1024 * 1024
QUEUED = 2
CROWDED = 8  # with this many uploads or more, each lane falls one batch behind at most
# Downloads read in chunks of 1 to 2 MiB (4 MiB served one client no faster and held up
# to 8 MiB more), smaller as more downloads share the budget, so memory stays bounded.
READ_MIN, READ_MAX, READ_BUDGET = 1024 * 1024, 2 * 1024 * 1024, 16 * 1024 * 1024


def _append(fd: int, chunks: list[Buffer]) -> None:
    """Write a batch at the file's position and start its writeback (in a worker thread)."""
    views = [memoryview(chunk) for chunk in chunks if len(chunk)]
    while views:
        written = os.writev(fd, views[:1024])
        done = 0
        while done < len(views) and written >= len(views[done]):
            written -= len(views[done])
            done += 1
        del views[:done]
        if written:
            views[0] = views[0][written:]
    start_writeback(fd)


class LocalStorage(Storage):
    name = "local"

    def __init__(
        self, root: Path, *, io_threads: int = 16, upload_expiry: timedelta = timedelta(hours=24)
    ):
        self.root = root.resolve()
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.index = Index(self.root / "index.sqlite3")
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="gateway-io")
        self.readers = 0  # downloads in progress, which share READ_BUDGET
        self.writers = 0  # uploads in progress, which share WRITE_BUDGET
        self.aligned = AlignedBuffers()  # for O_DIRECT writes
        self.uploads = LocalUploads(self, upload_expiry)

    def read_size(self) -> int:
        return max(READ_MIN, min(READ_MAX, READ_BUDGET // max(1, self.readers)))

    def write_batch(self) -> int:
        held = max(1, self.writers) * (QUEUED + 1)
        return max(WRITE_MIN, min(WRITE_MAX, WRITE_BUDGET // held))

    @classmethod
    def from_settings(cls, settings: Settings) -> "LocalStorage":
        return cls(settings.data_dir, upload_expiry=settings.upload_expiry)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def blob_path(self, blob: str) -> Path:
        return self.blobs / blob[:2] / blob

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        try:
            for folder in (self.root, self.blobs, self.tmp, self.root / "uploads"):
                await aiofiles.os.makedirs(folder, exist_ok=True)
            await self.index.open()
        except OSError as exc:
            raise BackendUnavailable("The data folder cannot be opened.") from exc
        await self.sweep()

    async def close(self) -> None:
        await self.index.close()
        self._io.shutdown(wait=True)

    async def sweep(self) -> None:
        """Remove what crashed or killed writers left behind; finish interrupted commits."""
        for blob in await self.index.garbage():
            await self._remove_blob(blob)
        for entry in await aiofiles.os.scandir(self.tmp):
            blob = entry.name
            fd = await self._run(_lock_if_abandoned, entry.path)
            if fd is None:
                continue
            try:
                if await self.index.references(blob):
                    await self._run(self._publish, blob)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        await aiofiles.os.unlink(entry.path)
            finally:
                os.close(fd)

    async def check(self) -> None:
        if not await aiofiles.os.path.isdir(self.blobs):
            raise BackendUnavailable("The data folder is missing.")
        await self.index.get("")

    # --- writing ---------------------------------------------------------------------

    async def stage(self, key: str, chunks: Chunks, spec: WriteSpec) -> Staged:
        blob, fd = await _written(self._run(_create_locked, self.tmp))
        path = self.tmp / blob
        digests = Digests(spec)
        try:
            await self._write(fd, chunks, digests)
            digests.verify()
            await _written(self._run(os.fsync, fd))
        except BaseException:
            await asyncio.shield(self._run(_unlink_and_close, path, fd))
            raise
        info = ObjectInfo(
            key=key,
            size=digests.size,
            etag=etag_for(digests.sha256),
            sha256=digests.sha256,
            content_type=spec.content_type,
            last_modified=datetime.now(UTC),
            filename=spec.filename,
            metadata=dict(spec.metadata),
        )
        return LocalStaged(self, blob, fd, info, spec.create_only)

    async def adopt(self, path: Path, locked_fd: int, info: ObjectInfo) -> ObjectInfo:
        """Commit a complete file (a finished resumable upload) as the object `info`
        describes, without copying it: it is linked into tmp/ and committed from there.
        The caller holds the file's flock(), which keeps the sweep off the new link too."""
        blob = await self._run(_link, path, self.tmp)
        staged = LocalStaged(self, blob, os.dup(locked_fd), info, create_only=False)
        return await staged.commit()

    async def _write(
        self, fd: int, chunks: Chunks, digests: Hasher, *, direct_from: int | None = None
    ) -> None:
        """Stream `chunks` into `fd`: a batch is written in one worker thread and hashed in
        another, both while the event loop receives the next batches; each lane may fall
        QUEUED batches behind (gateway.storage.lanes). (hashlib and writev release the GIL:
        the three run on separate cores when there are.) With
        `direct_from`, the chunks are appended from that offset with O_DIRECT where the
        file system allows it (gateway.storage.direct); the batches handed to the writer
        are written even when the stream breaks off."""
        loop = asyncio.get_running_loop()
        appender = None if direct_from is None else Appender(fd, direct_from, self.aligned)
        finished = False

        def write(batch: list[Buffer] | None) -> None:
            """A batch; None (appending) for the stream's end, its last bytes written by
            the thread that wrote the rest, with no trip of their own."""
            nonlocal finished
            if appender is None:
                _append(fd, batch or [])
            elif batch is None:
                finished = True  # tried once, whatever comes of it: never twice
                appender.finish()
            else:
                appender.append(batch)

        queued = QUEUED if self.writers < CROWDED else 1
        # The writer's lane first: where the disk is the slower of the two, a batch handed
        # to it a moment sooner is a moment less of the disk left idle.
        writer = Lane(self._io, write, queued)
        lanes: list[Lane[Any, None]] = [writer, Lane(self._io, digests.update, queued)]
        self.writers += 1
        try:
            async for batch in batched(chunks, self.write_batch, keep_on=BROKEN_OFF):
                for lane in lanes:
                    await _written(lane.put(batch))
                del batch  # the lanes' to let go of, not held while the next one comes
            if appender is not None:
                await _written(writer.put(None))
            for lane in lanes:
                await _written(lane.drain())
        finally:
            self.writers -= 1
            # Whatever became of the request, no thread may still use `fd` once it is closed
            # (nor the appender, which `finish` uses next), however often it is cancelled.
            for lane in lanes:
                await lane.settle()
            if appender is not None and not finished:  # else the writer's lane did
                # what it wrote stays (bytes received count); its error, if any, is not the
                # first one, which is the one to tell
                await settled(loop.run_in_executor(self._io, appender.finish))

    def _publish(self, blob: str) -> None:
        """Move a committed blob from tmp/ into blobs/, durably (runs in a thread)."""
        target = self.blob_path(blob)
        target.parent.mkdir(exist_ok=True)
        try:
            (self.tmp / blob).rename(target)
        except FileNotFoundError:
            return  # deleted or replaced between the commit and now; nothing to publish
        _fsync_dir(target.parent)

    async def _remove_blob(self, blob: str) -> None:
        await self._run(self._unlink_blob, blob)
        await self.index.forget_garbage(blob)

    def _unlink_blob(self, blob: str) -> None:
        # A blob moves from tmp/ to blobs/ once; trying blobs, tmp, blobs finds it wherever
        # a concurrent publish put it.
        for path in (self.blob_path(blob), self.tmp / blob, self.blob_path(blob)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                return

    # --- reading ---------------------------------------------------------------------

    def _info(self, row: Row) -> ObjectInfo:
        return ObjectInfo(
            key=row.key.decode(),
            size=row.size,
            etag=etag_for(row.sha256),
            sha256=row.sha256,
            content_type=row.content_type,
            last_modified=datetime.fromtimestamp(row.modified_ns / 1e9, UTC),
            filename=row.filename,
            metadata=row.metadata_dict,
        )

    async def _row(self, key: str) -> Row:
        row = await self.index.get(key)
        if row is None:
            raise NotFound()
        return row

    async def stat(self, key: str) -> ObjectInfo:
        return self._info(await self._row(key))

    async def open(self, key: str, spec: RangeSpec | None = None) -> ObjectReader:
        for _ in range(3):
            row = await self._row(key)
            fd = await self._run(self._open_blob, row.blob)
            if fd is not None:
                break
        else:
            raise BackendError("The object's data is missing.")
        info = self._info(row)
        try:
            byte_range = resolve_range(spec, info.size) if spec is not None else None
        except BaseException:
            os.close(fd)
            raise
        return LocalReader(self, fd, info, byte_range)

    def _open_blob(self, blob: str) -> int | None:
        # Between a commit and its publish the blob is still in tmp/.
        for path in (self.blob_path(blob), self.tmp / blob):
            with contextlib.suppress(FileNotFoundError):
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return None  # replaced or deleted since the row was read

    async def delete(self, key: str) -> None:
        blob = await self.index.delete(key)
        if blob is None:
            raise NotFound()
        await self._remove_blob(blob)

    async def list(
        self,
        prefix: str = "",
        delimiter: str | None = None,
        cursor: str | None = None,
        limit: int = 1000,
    ) -> Listing:
        after = decode_cursor(cursor) if cursor else None
        page = await self.index.page(prefix, delimiter, after, limit)
        return Listing(
            objects=[self._info(row) for row in page.rows],
            prefixes=[common.decode() for common in page.prefixes],
            next_cursor=encode_cursor(page.resume_after) if page.resume_after else None,
        )


class LocalStaged(Staged):
    def __init__(
        self, storage: LocalStorage, blob: str, fd: int, info: ObjectInfo, create_only: bool
    ):
        self.storage, self.blob, self.fd, self.info = storage, blob, fd, info
        self.create_only = create_only
        self._done = False

    async def commit(self) -> ObjectInfo:
        assert not self._done, "already committed or discarded"
        storage, info = self.storage, self.info
        now = time.time_ns()
        row = Row(
            key=info.key.encode(),
            blob=self.blob,
            size=info.size,
            sha256=info.sha256,
            content_type=info.content_type,
            modified_ns=now,
            filename=info.filename,
            metadata=json.dumps(dict(info.metadata), ensure_ascii=False),
        )
        replaced = await storage.index.put(row, create_only=self.create_only)
        self._done = True
        try:
            await asyncio.shield(storage._run(storage._publish, self.blob))
        finally:
            os.close(self.fd)  # releases the lock that kept the sweep away
        if replaced is not None:
            await storage._remove_blob(replaced)
        return storage._info(row)

    async def discard(self) -> None:
        if not self._done:
            self._done = True
            await asyncio.shield(
                self.storage._run(_unlink_and_close, self.storage.tmp / self.blob, self.fd)
            )


class LocalReader(ObjectReader):
    def __init__(
        self, storage: LocalStorage, fd: int, info: ObjectInfo, byte_range: ByteRange | None
    ):
        self.storage, self.fd, self.info, self.range = storage, fd, info, byte_range
        self._closed = False

    def file(self) -> tuple[int, int, int]:
        span = self._span()
        return self.fd, span.start, span.length

    def _span(self) -> ByteRange:
        return self.range or ByteRange(0, self.info.size - 1, self.info.size)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes in chunks, the next one read while this one is sent."""
        storage = self.storage
        span = self._span()
        position, end = span.start, span.end + 1
        ahead: asyncio.Future[bytes] | None = None

        def read_ahead() -> asyncio.Future[bytes] | None:
            if position >= end:
                return None
            size = min(storage.read_size(), end - position)
            return asyncio.ensure_future(storage._run(os.pread, self.fd, size, position))

        storage.readers += 1
        try:
            ahead = read_ahead()
            while ahead is not None:
                chunk = await ahead
                ahead = None
                if not chunk:
                    raise BackendError("The object's data is shorter than recorded.")
                position += len(chunk)
                ahead = read_ahead()
                yield chunk
        finally:
            storage.readers -= 1
            if ahead is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(ahead)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)


async def _written(pending: Awaitable[T]) -> T:
    """The result of a write to the data folder, its OSError turned into ours."""
    try:
        return await pending
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # room may be made: a retry later can succeed
            raise BackendUnavailable("The storage has no room left.") from exc
        raise BackendError("The object could not be written.") from exc


def _create_locked(folder: Path) -> tuple[str, int]:
    """A new tmp file, locked. A sweep may catch a file between its creation and its lock
    and remove it; the writer then finds it unlinked and starts over with another name."""
    while True:
        blob = uuid.uuid4().hex
        fd = os.open(folder / blob, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            return blob, fd
        os.close(fd)


def _link(source: Path, folder: Path) -> str:
    """A new name for `source` in tmp/ (a hard link)."""
    while True:
        blob = uuid.uuid4().hex
        with contextlib.suppress(FileExistsError):
            os.link(source, folder / blob)
            return blob


def _lock_if_abandoned(path: str) -> int | None:
    """An fd holding the lock of a tmp file no live writer holds, or None."""
    try:
        fd = open_locked(path, os.O_RDONLY)
    except BlockingIOError:
        return None
    if fd is not None and os.fstat(fd).st_nlink == 0:  # its writer removed it meanwhile
        os.close(fd)
        return None
    return fd


def _unlink_and_close(path: Path, fd: int) -> None:
    try:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
