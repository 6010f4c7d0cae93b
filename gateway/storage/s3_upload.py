"""Writing to S3: a body cut into parts in memory and sent while the request is still read.

A body shorter than one part is held (at most one part) and stored by one PutObject. A
longer one becomes a multipart upload: each part is gathered in its own buffer, given a
CRC32 (or Content-MD5) that S3 verifies, and sent while the next is gathered, at most
`S3_MAX_CONCURRENCY` parts in flight. An upload so holds at most part size x (parts in
flight + 1) bytes, and nothing touches the disk. The SHA-256 (and MD5, when a client sent
Content-MD5) of the whole body is computed here, part by part in a worker thread, and
checked before anything becomes visible. Any failure aborts the multipart upload.

S3 fixes an object's metadata when its upload starts, before the SHA-256 is known. A
multipart object therefore gets its SHA-256 as object tags once completed: `sha256`, and
`etag`, the S3 ETag of the version it describes, so that a reader can tell a tag written
for an older version (two writers racing) from a true one. Where a server has no object
tagging (R2), the object is instead copied onto itself with the SHA-256 in its metadata,
on condition that it is still the version just completed.
"""

import asyncio
import base64
import hashlib
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal

from ..digests import Digests
from ..errors import BackendError, PreconditionFailed
from .base import Buffer, ObjectInfo, Staged, WriteSpec
from .s3_body import PartBody

if TYPE_CHECKING:
    from .s3 import S3Storage

PartChecksum = Literal["crc32", "md5"]
MAX_COPY_BYTES = 5 * 1000**3  # the largest object one CopyObject may copy
RESERVE_AT = 1024 * 1024  # a buffer this large takes one of the process's part buffers
HELD_SMALL_BYTES = 64 * 1024 * 1024  # short staged bodies held in memory, in the process


class Unsupported(BackendError):
    """The S3 server does not implement an operation (501 NotImplemented)."""


def object_metadata(spec: WriteSpec, sha256: str = "") -> dict[str, str]:
    """x-amz-meta-* of an object. S3 metadata is ASCII: values are percent-encoded.

    Spaces are encoded too: HTTP trims a header value's leading and trailing
    whitespace, which would turn a filename "a " into "a".
    """
    from urllib.parse import quote

    safe = "/!#$&'()*+,-.:;=?@[]^_`{|}~"
    metadata = {f"m-{name}": quote(value, safe=safe) for name, value in spec.metadata.items()}
    if spec.filename is not None:
        metadata["filename"] = quote(spec.filename, safe=safe)
    if sha256:
        metadata["sha256"] = sha256
    return metadata


def part_checksum(data: Buffer, checksum: PartChecksum) -> dict[str, str]:
    """A part's own checksum header, which S3 verifies."""
    if checksum == "md5":
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        return {"ContentMD5": base64.b64encode(md5).decode()}
    crc = zlib.crc32(data).to_bytes(4, "big")
    return {"ChecksumCRC32": base64.b64encode(crc).decode()}


def _hash_part(data: Buffer, digests: Digests, checksum: PartChecksum) -> dict[str, str]:
    """Feed a part to the object's digests and return its own checksum header (runs in a
    worker thread: hashlib and zlib release the GIL)."""
    digests.update([data])
    return part_checksum(data, checksum)


class Part:
    """One part's bytes, gathered chunk by chunk into memory reserved for a whole part.

    The memory comes from the process's BufferPool and goes back to it, to be filled again
    by a later part: a fresh 8 MiB buffer faults its pages in (on a virtual machine, as
    costly as copying them), and a BytesIO copies again each time it grows. The part is
    sent from that memory as it is (see gateway.storage.s3_body).
    """

    __slots__ = ("_pool", "memory", "size", "view")

    def __init__(self, memory: bytearray, pool: "BufferPool"):
        self._pool: BufferPool | None = pool
        self.memory, self.view, self.size = memory, memoryview(memory), 0

    @property
    def full(self) -> bool:
        return self.size == len(self.memory)

    def fill(self, chunk: Buffer) -> int:
        """Copy as much of `chunk` as fits; return how much that was."""
        taken = min(len(chunk), len(self.memory) - self.size)
        self.view[self.size : self.size + taken] = chunk[:taken]
        self.size += taken
        return taken

    def data(self) -> memoryview:
        return self.view[: self.size]

    def body(self) -> PartBody:
        """The part as a request body; it reads the part's memory, so the part is released
        only once its request is done."""
        return PartBody(self.data())

    def release(self) -> None:
        """Give the memory back to the pool (once; a part is not used after)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.give_back(self.memory)


class BufferPool:
    """The part buffers a process may hold at once, over all its uploads, so that memory
    stays bounded however many clients upload together: an upload whose body grows past
    1 MiB waits for one of them, and TCP flow control holds its client meanwhile.

    Up to `keep` freed buffers are kept for the next parts (one upload at full speed needs
    parts in flight + 1), the others go back to the system at once, and the kept ones too
    once no upload has needed a buffer for `idle` seconds."""

    def __init__(self, parts: int, keep: int | None = None, idle: float = 10.0):
        self._free = asyncio.Semaphore(parts)
        self._spare: list[bytearray] = []
        self.keep = parts if keep is None else keep
        self.idle = idle
        self._idle_timer: asyncio.TimerHandle | None = None
        self.in_use = 0
        self.peak = 0  # the most buffers ever reserved at once

    @property
    def spare(self) -> int:
        """Freed buffers kept for the next parts."""
        return len(self._spare)

    async def reserve(self, size: int) -> Part:
        await self._free.acquire()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)
        for at, memory in enumerate(self._spare):
            if len(memory) == size:
                return Part(self._spare.pop(at), self)
        if self._spare:  # of another part size: make room for the new one
            self._spare.pop()
        return Part(bytearray(size), self)

    def give_back(self, memory: bytearray) -> None:
        self.in_use -= 1
        if len(self._spare) < self.keep:
            self._spare.append(memory)
        self._free.release()
        if self.in_use == 0 and self._spare and self._idle_timer is None:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(self.idle, self._drop_spares)

    def _drop_spares(self) -> None:
        self._idle_timer = None
        self._spare.clear()


class Gatherer:
    """A body's bytes cut into parts as they arrive. Until a first part has gone, they wait
    in a small buffer of their own, and move to a buffer of the process's pool only past
    RESERVE_AT: a short body takes none, and a long one copies its first MiB once more."""

    def __init__(self, pool: BufferPool, part_size: int, part: Part | None = None):
        self.pool, self.part_size = pool, part_size
        self.part = part  # the part being filled, in a pool buffer
        self.small = bytearray()
        self.started = part is not None  # a part has been sent, or there was a tail

    @property
    def size(self) -> int:
        """The bytes gathered and not handed on."""
        return self.part.size if self.part is not None else len(self.small)

    async def add(self, chunk: Buffer, send: Callable[[Part], Awaitable[None]]) -> None:
        """Gather `chunk`, handing each part that fills to `send`, whose it is from then."""
        view = memoryview(chunk)
        while view:
            if self.part is None:
                if not self.started and len(self.small) + len(view) <= RESERVE_AT:
                    self.small += view
                    return
                await self._reserve()
                assert self.part is not None
            view = view[self.part.fill(view) :]
            if self.part.full:
                await self._hand(send)

    async def flush(self, send: Callable[[Part], Awaitable[None]]) -> None:
        """Hand what is gathered to `send` as a last, shorter part (even an empty one)."""
        if self.part is None:
            await self._reserve()
        await self._hand(send)

    def body(self) -> PartBody | bytearray:
        """What is gathered, as a request body (read from the buffers as they are)."""
        return self.part.body() if self.part is not None else self.small

    def release(self) -> None:
        if self.part is not None:
            self.part.release()
            self.part = None
        self.small = bytearray()

    async def _reserve(self) -> None:
        self.part = await self.pool.reserve(self.part_size)
        self.part.fill(self.small)  # RESERVE_AT is below any part size
        self.small = bytearray()

    async def _hand(self, send: Callable[[Part], Awaitable[None]]) -> None:
        part, self.part = self.part, None
        assert part is not None
        self.started = True
        await send(part)


class S3Writer:
    """Takes a body chunk by chunk; `finish()` gives the Staged object."""

    def __init__(self, storage: "S3Storage", key: str, spec: WriteSpec, part_size: int):
        self.storage, self.key, self.spec, self.part_size = storage, key, spec, part_size
        self.digests = Digests(spec)
        self.gathered = Gatherer(storage.buffers, part_size)
        self.upload: S3Multipart | None = None

    async def write(self, chunk: Buffer) -> None:
        await self.gathered.add(chunk, self._send)

    async def _send(self, part: Part) -> None:
        try:
            checksum = await self._hash(part.data())
            if self.upload is None:
                self.upload = S3Multipart(self.storage, self.key, self.spec)
                await self.upload.start()
        except BaseException:
            part.release()
            raise
        await self.upload.send(checksum, part)

    async def _hash(self, data: Buffer) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, _hash_part, data, self.digests, self.storage.part_checksum
        )

    async def finish(self) -> Staged:
        gathered = self.gathered
        held = self.storage.held_small
        holds = gathered.size if self.spec.grouped else 0  # what waits for other files
        if self.upload is None and held.take(holds):
            # one PutObject, of a body shorter than a part, held in memory until its
            # commit: right away, or once the rest of its form has arrived
            part = gathered.part
            try:
                body = bytes(part.data()) if part is not None else gathered.small
            finally:
                # A staged body may wait for the rest of its form: it must not hold a pool
                # buffer meanwhile, or a form of more files than the pool has buffers
                # would wait for ever, and every other upload with it.
                gathered.release()
            try:
                checksum = await self._hash(body)
                self.digests.verify()
            except BaseException:
                held.give_back(holds)
                raise
            return S3SmallStaged(self.storage, self._info(), body, checksum, self.spec, holds)
        # a long body; or a short one of a form when short bodies already hold
        # HELD_SMALL_BYTES: it waits in S3, as a multipart upload of one part
        if gathered.size or self.upload is None:
            await gathered.flush(self._send)
        upload = self.upload
        assert upload is not None  # the flush started it
        await upload.drain()
        self.digests.verify()
        upload.info = self._info()
        return upload

    async def abort(self) -> None:
        self.gathered.release()
        if self.upload is not None:
            await self.upload.abort()

    def _info(self) -> ObjectInfo:
        digests, spec = self.digests, self.spec
        return ObjectInfo(
            key=self.key,
            size=digests.size,
            etag=f'"{digests.sha256}"',
            sha256=digests.sha256,
            content_type=spec.content_type,
            last_modified=datetime.now(UTC),
            filename=spec.filename,
            metadata=dict(spec.metadata),
        )


class HeldBytes:
    """The bytes of short bodies that forms hold in memory, in the whole process: a form's
    files wait for its last one before any is committed. Past `budget`, a form's next
    short bodies wait in S3 instead (S3Writer.finish), so that a form of many files, or
    many forms at once, cannot fill the memory. (A single PUT's body is committed right
    away and not counted.)"""

    def __init__(self, budget: int):
        self.budget = budget
        self.held = 0

    def take(self, size: int) -> bool:
        if size and self.held + size > self.budget:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class S3SmallStaged(Staged):
    """A body shorter than one part, held in memory until its PutObject."""

    def __init__(
        self,
        storage: "S3Storage",
        info: ObjectInfo,
        body: bytes | bytearray,
        checksum: dict[str, str],
        spec: WriteSpec,
        held: int,
    ):
        self.storage, self.info, self.body, self.checksum = storage, info, body, checksum
        self.spec = spec
        self.held = held  # of HeldBytes, given back once

    async def commit(self) -> ObjectInfo:
        params: dict[str, Any] = {
            "Key": self.info.key,
            "Body": self.body,
            "ContentType": self.info.content_type,
            "Metadata": object_metadata(self.spec, self.info.sha256),
            **self.checksum,
        }
        if self.spec.create_only:
            params["IfNoneMatch"] = "*"
        try:
            response = await self.storage.call("put_object", **params)
        finally:
            await self.discard()
        return _with_time(self.info, _response_date(response))

    async def discard(self) -> None:
        self.storage.held_small.give_back(self.held)
        self.held = 0
        self.body = b""


class S3Multipart(Staged):
    """A multipart upload: parts sent as they fill, completed at commit."""

    def __init__(
        self,
        storage: "S3Storage",
        key: str,
        spec: WriteSpec,
        upload_id: str | None = None,
        parts: list[dict[str, Any]] | None = None,
    ):
        self.storage, self.key, self.spec = storage, key, spec
        self.upload_id = upload_id  # None until start(); given, to go on with an upload
        self.parts: list[dict[str, Any]] = list(parts or [])
        self.in_flight: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(storage.concurrency)
        self._done = False

    async def start(self) -> None:
        params: dict[str, Any] = {
            "Key": self.key,
            "ContentType": self.spec.content_type,
            "Metadata": object_metadata(self.spec),
        }
        if self.storage.part_checksum == "crc32":
            params["ChecksumAlgorithm"] = "CRC32"
        response = await self.storage.call("create_multipart_upload", **params)
        self.upload_id = response["UploadId"]
        self.storage.active.add(self.upload_id)

    async def send(self, checksum: dict[str, str], part: Part) -> None:
        """Start sending the next part; wait only while every slot is taken. The part's
        buffer goes back to the pool once it is sent (or not)."""
        try:
            self._raise_failure()
            await self.slots.acquire()
        except BaseException:
            part.release()
            raise
        number = len(self.parts) + 1
        entry: dict[str, Any] = {"PartNumber": number}
        if "ChecksumCRC32" in checksum:
            entry["ChecksumCRC32"] = checksum["ChecksumCRC32"]
        self.parts.append(entry)
        task = asyncio.create_task(self._upload(entry, part.body(), checksum))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        # done callbacks run even for a task cancelled before it started
        task.add_done_callback(lambda _: self._part_done(part))

    def _part_done(self, part: Part) -> None:
        self.slots.release()
        part.release()

    async def _upload(
        self, entry: dict[str, Any], body: PartBody, checksum: dict[str, str]
    ) -> None:
        response = await self.storage.call(
            "upload_part",
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=entry["PartNumber"],
            Body=body,
            **checksum,
        )
        entry["ETag"] = response["ETag"]

    def _raise_failure(self) -> None:
        for task in list(self.in_flight):
            if task.done() and not task.cancelled() and (error := task.exception()):
                raise error

    async def drain_quietly(self) -> None:
        """Wait for the parts in flight, whatever becomes of them."""
        await asyncio.gather(*self.in_flight, return_exceptions=True)

    async def drain(self) -> None:
        """Wait for every part; raise the first failure."""
        while self.in_flight:
            done, _ = await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and (error := task.exception()):
                    raise error

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        for task in self.in_flight:
            task.cancel()
        await asyncio.gather(*self.in_flight, return_exceptions=True)
        if self.upload_id is not None:
            self.storage.active.discard(self.upload_id)
            await self.storage.aborter.abort(self.key, self.upload_id)

    async def discard(self) -> None:
        await asyncio.shield(self.abort())

    async def commit(self) -> ObjectInfo:
        assert not self._done, "already committed or discarded"
        try:
            return await self.complete()
        except BaseException:
            await asyncio.shield(self.abort())
            raise

    async def complete(self) -> ObjectInfo:
        """Complete the upload as `self.info` describes it (not aborted if this fails)."""
        etag, completed_at = await self.finish()
        return await self.record_sha256(etag, completed_at)

    async def finish(self) -> tuple[str, datetime | None]:
        """CompleteMultipartUpload: the object's S3 ETag and when it was made."""
        params: dict[str, Any] = {
            "Key": self.key,
            "UploadId": self.upload_id,
            "MultipartUpload": {"Parts": self.parts},
        }
        if self.spec.create_only:
            params["IfNoneMatch"] = "*"
        completed = await self.storage.call("complete_multipart_upload", **params)
        self._done = True
        self.storage.active.discard(self.upload_id)
        return completed["ETag"], _response_date(completed)

    async def record_sha256(self, etag: str, completed_at: datetime | None) -> ObjectInfo:
        info, storage = self.info, self.storage
        if storage.tagging:
            try:
                await storage.call(
                    "put_object_tagging",
                    Key=info.key,
                    Tagging={
                        "TagSet": [
                            {"Key": "sha256", "Value": info.sha256},
                            {"Key": "etag", "Value": etag.strip('"')},
                        ]
                    },
                )
                return _with_time(info, completed_at)
            except Unsupported:
                storage.tagging = False
        if info.size > MAX_COPY_BYTES:
            return info  # too large for one CopyObject: it keeps S3's ETag
        # With CRC32 parts, the copy must compute the whole object's CRC32 anew, or it keeps
        # the composite one, which some servers then report as wrong.
        checksum = {"ChecksumAlgorithm": "CRC32"} if storage.part_checksum == "crc32" else {}
        try:
            copied = await storage.call(
                "copy_object",
                Key=info.key,
                CopySource={"Bucket": storage.bucket, "Key": info.key},
                CopySourceIfMatch=etag,
                MetadataDirective="REPLACE",
                ContentType=info.content_type,
                Metadata=object_metadata(self.spec, info.sha256),
                **checksum,
            )
        except PreconditionFailed:
            return info  # a newer version replaced ours meanwhile; it keeps its own metadata
        return _with_time(info, copied["CopyObjectResult"]["LastModified"].astimezone(UTC))


def _response_date(response: dict[str, Any]) -> datetime | None:
    """The Date header of an S3 response: the nearest second to when the object was made,
    for operations (PutObject, CompleteMultipartUpload) that return no LastModified."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date).astimezone(UTC)
    except (TypeError, ValueError):
        return None


def _with_time(info: ObjectInfo, modified: datetime | None) -> ObjectInfo:
    if modified is None:
        return info
    return ObjectInfo(
        info.key,
        info.size,
        info.etag,
        info.sha256,
        info.content_type,
        modified,
        info.filename,
        info.metadata,
    )
