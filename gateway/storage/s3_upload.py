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
import io
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Literal

from ..digests import Digests
from ..errors import BackendError, PreconditionFailed
from .base import ObjectInfo, Staged, WriteSpec

if TYPE_CHECKING:
    from .s3 import S3Storage

PartChecksum = Literal["crc32", "md5"]
MAX_COPY_BYTES = 5 * 1000**3  # the largest object one CopyObject may copy
RESERVE_AT = 1024 * 1024  # a buffer this large takes one of the process's part buffers
Release = Callable[[], None]


class BufferPool:
    """The part buffers a process may hold at once, over all its uploads, so that memory
    stays bounded however many clients upload together: an upload whose buffer grows past
    1 MiB waits for one of them, and TCP flow control holds its client meanwhile."""

    def __init__(self, parts: int):
        self._free = asyncio.Semaphore(parts)

    async def reserve(self) -> Release:
        await self._free.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._free.release()

        return release


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


def part_checksum(part: io.BytesIO, checksum: PartChecksum) -> dict[str, str]:
    """A part's own checksum header, which S3 verifies."""
    with part.getbuffer() as view:
        if checksum == "md5":
            md5 = hashlib.md5(view, usedforsecurity=False).digest()
            return {"ContentMD5": base64.b64encode(md5).decode()}
        crc = zlib.crc32(view).to_bytes(4, "big")
        return {"ChecksumCRC32": base64.b64encode(crc).decode()}


def _hash_part(part: io.BytesIO, digests: Digests, checksum: PartChecksum) -> dict[str, str]:
    """Feed a part to the object's digests and return its own checksum header (runs in a
    worker thread: hashlib and zlib release the GIL)."""
    with part.getbuffer() as view:
        digests.update([view])
    return part_checksum(part, checksum)


class S3Writer:
    """Takes a body chunk by chunk; `finish()` gives the Staged object."""

    def __init__(self, storage: "S3Storage", key: str, spec: WriteSpec, part_size: int):
        self.storage, self.key, self.spec, self.part_size = storage, key, spec, part_size
        self.digests = Digests(spec)
        self.buffer = io.BytesIO()
        self.release: Release | None = None  # of the pool buffer this one counts against
        self.upload: S3Multipart | None = None

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.release is None and self.buffer.tell() + len(chunk) > RESERVE_AT:
            self.release = await self.storage.buffers.reserve()
        self.buffer.write(chunk)
        if self.buffer.tell() >= self.part_size:
            if self.upload is None:
                self.upload = S3Multipart(self.storage, self.key, self.spec)
                await self.upload.start()
            await self.upload.send(await self._hash(self.buffer), self.buffer, self._hand_over())
            self.buffer = io.BytesIO()

    def _hand_over(self) -> Release:
        release, self.release = self.release or (lambda: None), None
        return release

    async def _hash(self, part: io.BytesIO) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            None, _hash_part, part, self.digests, self.storage.part_checksum
        )

    async def finish(self) -> Staged:
        checksum = await self._hash(self.buffer)
        if self.upload is None:
            self.digests.verify()
            return S3SmallStaged(
                self.storage, self._info(), self.buffer, checksum, self.spec, self._hand_over()
            )
        if self.buffer.tell():
            await self.upload.send(checksum, self.buffer, self._hand_over())
        await self.upload.drain()
        self.digests.verify()
        self.upload.info = self._info()
        return self.upload

    async def abort(self) -> None:
        self._hand_over()()
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


class S3SmallStaged(Staged):
    """A body shorter than one part, held in memory until its PutObject."""

    def __init__(
        self,
        storage: "S3Storage",
        info: ObjectInfo,
        body: io.BytesIO,
        checksum: dict[str, str],
        spec: WriteSpec,
        release: Release,
    ):
        self.storage, self.info, self.body, self.checksum = storage, info, body, checksum
        self.spec, self.release = spec, release

    async def commit(self) -> ObjectInfo:
        self.body.seek(0)
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
            self.body = io.BytesIO()
            self.release()
        return _with_time(self.info, _response_date(response))

    async def discard(self) -> None:
        self.body = io.BytesIO()
        self.release()


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

    async def send(self, checksum: dict[str, str], body: io.BytesIO, release: Release) -> None:
        """Start sending the next part; wait only while every slot is taken. `release`
        gives its buffer back to the pool once the part is sent (or not)."""
        try:
            self._raise_failure()
            await self.slots.acquire()
        except BaseException:
            release()
            raise
        number = len(self.parts) + 1
        entry: dict[str, Any] = {"PartNumber": number}
        if "ChecksumCRC32" in checksum:
            entry["ChecksumCRC32"] = checksum["ChecksumCRC32"]
        self.parts.append(entry)
        task = asyncio.create_task(self._upload(entry, body, checksum))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        # done callbacks run even for a task cancelled before it started
        task.add_done_callback(lambda _: self._part_done(release))

    def _part_done(self, release: Release) -> None:
        self.slots.release()
        release()

    async def _upload(
        self, entry: dict[str, Any], body: io.BytesIO, checksum: dict[str, str]
    ) -> None:
        body.seek(0)
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
