"""Resumable uploads on the local disk: an append-only data file, a state record beside it.

    uploads/<id>.bin    the bytes received so far: its size is the upload's offset
    uploads/<id>.json   key, length, metadata, and the committed object once complete

The offset is the data file's size, never a number kept apart from the bytes, so a crash
cannot make them disagree: after a kill -9 the upload resumes from what was written. A
request appending holds an flock() on the data file; a second one, from this process or
another, gets 423. A chunk whose Upload-Checksum does not match, or that breaks off before
it can be checked, is cut off again.

SHA-256 of an upload that spans many requests: each request continues the hash where the
last one left it when it runs in the same process (the hash state is kept in memory, keyed
by upload and offset, as a cache only). When that chain is broken (another instance took a
request, the process restarted, a request broke off), the finished file is read once more
and hashed: about half a second per GiB here.
"""

import asyncio
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..digests import HashChains
from ..errors import (
    BadRequest,
    ChunkChecksumMismatch,
    Gone,
    Locked,
    NotFound,
    OffsetMismatch,
    TooLarge,
)
from .base import Buffer, Chunks, ObjectInfo, Uploads, UploadSpec, UploadState, etag_for
from .locking import open_locked

if TYPE_CHECKING:
    from hashlib import _Hash

    from .local import LocalStorage

_ID = re.compile(r"^[0-9a-f]{32}$")
READ_BLOCK = 4 * 1024 * 1024


class _Hashes:
    """Feeds each written batch to the object's SHA-256 (if its chain is whole) and to the
    chunk's own checksum (if the client sent one)."""

    def __init__(self, *hashes: "_Hash | None"):
        self.hashes = [h for h in hashes if h is not None]

    def update(self, chunks: Sequence[Buffer]) -> None:
        for chunk in chunks:
            for hasher in self.hashes:
                hasher.update(chunk)


class LocalUploads(Uploads):
    def __init__(self, storage: "LocalStorage", expiry: timedelta):
        self.storage = storage
        self.folder = storage.root / "uploads"
        self.expiry = expiry
        self.chains = HashChains()

    def _data(self, upload_id: str) -> Path:
        return self.folder / f"{upload_id}.bin"

    def _record(self, upload_id: str) -> Path:
        return self.folder / f"{upload_id}.json"

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await self.storage._run(fn, *args)

    # --- state ---------------------------------------------------------------------------

    async def create(self, spec: UploadSpec) -> UploadState:
        upload_id = spec.id
        if not _ID.match(upload_id):
            raise ValueError("an upload id is 32 lower-case hex digits")
        record = {
            "id": upload_id,
            "key": spec.key,
            "length": spec.length,
            "metadata": dict(spec.metadata),
            "content_type": spec.content_type,
            "filename": spec.filename,
            "object": None,
        }
        await self._run(self._create, upload_id, record)
        return await self.info(upload_id)

    def _create(self, upload_id: str, record: dict[str, Any]) -> None:
        self.folder.mkdir(exist_ok=True)
        self._data(upload_id).touch(exist_ok=False)
        _write_json(self._record(upload_id), record)

    async def info(self, upload_id: str) -> UploadState:
        state: UploadState = await self._run(self._state, upload_id)
        return state

    def _state(self, upload_id: str, *, allow_expired: bool = False) -> UploadState:
        if not _ID.match(upload_id):
            raise NotFound("No such upload.")
        try:
            record = json.loads(self._record(upload_id).read_text())
            touched = self._record(upload_id).stat().st_mtime
        except (FileNotFoundError, ValueError):
            raise NotFound("No such upload.") from None
        try:
            data = self._data(upload_id).stat()
            offset, touched = data.st_size, max(touched, data.st_mtime)
        except FileNotFoundError:  # committed: the bytes are the object now
            offset = record["length"] or 0
        expires = datetime.fromtimestamp(touched, UTC) + self.expiry
        if not allow_expired and expires <= datetime.now(UTC):
            raise Gone()
        committed = record.get("object")
        return UploadState(
            id=upload_id,
            key=record["key"],
            length=record["length"],
            offset=offset,
            metadata=record["metadata"],
            content_type=record["content_type"],
            filename=record["filename"],
            expires=expires,
            object=ObjectInfo.from_json(committed) if committed else None,
        )

    # --- appending ---------------------------------------------------------------------------

    async def append(
        self,
        upload_id: str,
        offset: int,
        chunks: Chunks,
        *,
        checksum: tuple[str, bytes] | None = None,
        length: int | None = None,
        admit: Callable[[UploadState], None] | None = None,
    ) -> UploadState:
        taking: asyncio.Future[tuple[int | None, UploadState]] = asyncio.ensure_future(
            self._run(self._take, upload_id, offset, admit)
        )
        try:
            fd, state = await asyncio.shield(taking)
        except asyncio.CancelledError:
            # the thread takes the lock all the same: let it go once it has
            taking.add_done_callback(_release_taken)
            raise
        if fd is None:  # complete and committed already
            return state
        try:
            state = await self._declare_length(state, length)
            if state.length is None or offset < state.length:
                room = None if state.length is None else state.length - offset
                size = await self._receive(upload_id, fd, offset, room, chunks, checksum)
                state = replace(state, offset=size, expires=datetime.now(UTC) + self.expiry)
            if state.length is not None and state.offset == state.length:
                return await self._finish(upload_id, fd)
            return state
        finally:
            os.close(fd)  # releases the lock

    def _take(
        self, upload_id: str, offset: int, admit: Callable[[UploadState], None] | None
    ) -> tuple[int | None, UploadState]:
        """Judge the request, then lock the upload for appending at `offset`, in one trip to
        a worker thread. The descriptor is None for an upload committed already.

        A request is judged before the lock is tried: one that may not touch the upload
        never holds its lock, not even for a moment (it could otherwise keep its owner's
        requests busy), and is told 403 or 413 rather than 423. The state is read again
        once the lock is held, as another request may have appended or declared the
        length meanwhile (the key, which `admit` judges, never changes)."""
        state = self._state(upload_id)  # NotFound for an id that is not one
        if admit is not None:
            admit(state)
        fd = _lock(self._data(upload_id))
        try:
            if fd is not None:
                state = self._state(upload_id)
                if state.object is not None:  # committed while this request waited
                    os.close(fd)
                    fd = None
            if offset != state.offset:
                raise OffsetMismatch(state.offset, offset)
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        return fd, state

    async def _declare_length(self, state: UploadState, length: int | None) -> UploadState:
        if length is None:
            return state
        if state.length is not None:
            if length != state.length:
                raise BadRequest(f"The upload's length is {state.length}; it cannot change.")
            return state
        if length < state.offset:
            raise BadRequest("Upload-Length is below the upload's offset.")
        await self._run(self._update_record, state.id, {"length": length})
        return await self.info(state.id)

    async def _receive(
        self,
        upload_id: str,
        fd: int,
        offset: int,
        room: int | None,
        chunks: Chunks,
        checksum: tuple[str, bytes] | None,
    ) -> int:
        """Append the chunks; return the new size of the data file."""
        object_hash = self.chains.take(upload_id, offset)
        chunk_hash = hashlib.new(checksum[0]) if checksum else None
        try:
            await self.storage._write(
                fd, _at_most(chunks, room), _Hashes(object_hash, chunk_hash), direct_from=offset
            )
        except BaseException as exc:
            # A refused request keeps nothing, nor does one that broke off before its bytes
            # could be checked against its Upload-Checksum.
            if isinstance(exc, TooLarge) or checksum:
                await asyncio.shield(self._run(os.ftruncate, fd, offset))
            raise
        if checksum and chunk_hash and chunk_hash.digest() != checksum[1]:
            await self._run(os.ftruncate, fd, offset)
            raise ChunkChecksumMismatch()
        size = os.fstat(fd).st_size
        self.chains.keep(upload_id, size, object_hash)
        return size

    async def _finish(self, upload_id: str, fd: int) -> UploadState:
        """Commit the complete upload as its object."""
        state = await self.info(upload_id)
        size = state.offset
        await self._run(os.fsync, fd)
        chain = self.chains.take(upload_id, size)
        sha256 = (
            chain.hexdigest()
            if chain is not None
            else await self._run(_sha256_of_file, self._data(upload_id))
        )
        info = ObjectInfo(
            key=state.key,
            size=size,
            etag=etag_for(sha256),
            sha256=sha256,
            content_type=state.content_type,
            last_modified=datetime.now(UTC),
            filename=state.filename,
            metadata={},
        )
        info = await self.storage.adopt(self._data(upload_id), fd, info)
        await self._run(self._update_record, upload_id, {"object": info.to_json()})
        with contextlib.suppress(FileNotFoundError):
            await self._run(self._data(upload_id).unlink)
        return await self.info(upload_id)

    def _update_record(self, upload_id: str, changes: dict[str, Any]) -> None:
        path = self._record(upload_id)
        _write_json(path, {**json.loads(path.read_text()), **changes})

    # --- ending ---------------------------------------------------------------------------

    async def terminate(self, upload_id: str) -> None:
        await self.info(upload_id)
        fd = await self._run(_lock, self._data(upload_id))
        try:
            await self._run(self._remove, upload_id)
        finally:
            if fd is not None:
                os.close(fd)

    def _remove(self, upload_id: str) -> None:
        self.chains.drop(upload_id)
        # the bytes first: once the record is gone, nothing of the upload is left
        for path in (self._data(upload_id), self._record(upload_id)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def sweep(self) -> int:
        expired: int = await self._run(self._sweep)
        return expired

    def _sweep(self) -> int:
        """Remove expired uploads that no request holds; count the unfinished ones."""
        expired = 0
        if not self.folder.exists():
            return 0
        for record in self.folder.glob("*.json"):
            upload_id = record.stem
            try:
                state = self._state(upload_id, allow_expired=True)
            except NotFound:
                continue
            if state.expires > datetime.now(UTC):
                continue
            try:
                fd = _lock(self._data(upload_id))
            except Locked:
                continue
            try:
                self._remove(upload_id)
            finally:
                if fd is not None:
                    os.close(fd)
            expired += state.object is None
        for data in self.folder.glob("*.bin"):  # a crash between the two files of a create
            if not self._record(data.stem).exists() and data.stat().st_mtime < time.time() - 60:
                data.unlink(missing_ok=True)
        return expired


async def _at_most(chunks: Chunks, limit: int | None) -> AsyncIterator[Buffer]:
    """Pass chunks on; TooLarge once they add up to more than `limit` (if there is one)."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if limit is not None and total > limit:
            raise TooLarge("The chunk goes past the upload's length.")
        yield chunk
        del chunk  # not held while the next one is awaited


def _release_taken(taking: "asyncio.Future[tuple[int | None, UploadState]]") -> None:
    """Close the descriptor _take locked for a request that was cancelled meanwhile."""
    if taking.cancelled() or taking.exception() is not None:
        return
    fd, _ = taking.result()
    if fd is not None:
        os.close(fd)


def _lock(path: Path) -> int | None:
    """The data file, opened for writing and locked; Locked if another request holds it.
    None for an upload whose data file is gone (committed)."""
    try:
        return open_locked(path, os.O_WRONLY)
    except BlockingIOError:
        raise Locked() from None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Replace a small JSON file atomically and durably."""
    temporary = path.with_suffix(".json.new")
    with temporary.open("w") as out:
        json.dump(value, out)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()
