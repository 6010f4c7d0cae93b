"""Resumable uploads on S3: one multipart upload per tus upload, its state in the bucket.

    .gateway/uploads/<id>/state   JSON: key, length, offset, parts sent, tail size, lease
    .gateway/uploads/<id>/tail    the bytes after the last full part (shorter than a part)

The multipart upload is made at the object's own key, so that completing it commits the
object in place. Bytes that do not yet fill a part wait in the tail object, never in
memory between requests, so the next PATCH may land on any instance: it reads the tail,
puts the new bytes after it, sends every full part and writes the rest back as the tail.

One PATCH at a time: a PATCH takes a lease by writing the state record with If-Match on
the ETag it read (S3 conditional writes; no shared memory, no other service), renews it
every LEASE_RENEW seconds while it runs, and hands it back with its final state write. A
second PATCH finds the lease (423), or loses the race on If-Match (423). A lease whose
holder died runs out after LEASE_TTL seconds. The offset lives in the state record only:
a part sent by a PATCH that never saved its state is not counted, and the next PATCH
sends its part number again, so no byte is ever counted twice.

A client that goes away mid-PATCH: the parts already sent and the bytes received after
them (as the new tail) are kept and counted. A PATCH with Upload-Checksum keeps nothing
unless the whole chunk matches.
"""

import asyncio
import contextlib
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from ..digests import HashChains
from ..errors import (
    BROKEN_OFF,
    BadRequest,
    ChunkChecksumMismatch,
    Conflict,
    GatewayError,
    Gone,
    Locked,
    NotFound,
    OffsetMismatch,
    PreconditionFailed,
    RequestTimeout,
    TooLarge,
)
from ..keys import RESERVED_PREFIX
from .base import Chunks, ObjectInfo, Uploads, UploadSpec, UploadState, WriteSpec
from .lanes import BackgroundHashes
from .s3_body import PartBody
from .s3_upload import Gatherer, Part, S3Multipart, part_checksum

if TYPE_CHECKING:
    from .s3 import S3Storage

PREFIX = RESERVED_PREFIX + "uploads/"
LEASE_TTL = 30.0
LEASE_RENEW = 10.0
_ID = re.compile(r"^[0-9a-f]{32}$")


def _now() -> datetime:
    return datetime.now(UTC)


class _Lease:
    """The right to change one upload's state, held by writing the state conditionally."""

    def __init__(
        self, uploads: "S3Uploads", state: dict[str, Any], etag: str, *, touch: bool = True
    ):
        self.uploads, self.state, self.etag, self.touch = uploads, state, etag, touch
        self.token = uuid.uuid4().hex
        self.held = False
        self._writing = asyncio.Lock()
        self._renewer: asyncio.Task[None] | None = None

    async def take(self) -> None:
        held = self.state.get("lease")
        if held and held["until"] > time.time():
            raise Locked()
        await self.save(self.state)
        self._renewer = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEW)
            with contextlib.suppress(GatewayError):
                await self.save(self.state)

    async def save(self, state: dict[str, Any], *, release: bool = False) -> None:
        async with self._writing:
            self.state = state
            record = {
                **state,
                "lease": None
                if release
                else {"token": self.token, "until": time.time() + LEASE_TTL},
            }
            try:
                self.etag = await self.uploads._write_state(
                    record, if_match=self.etag, touch=self.touch
                )
            except PreconditionFailed:
                self.held = False
                raise Locked("Another request took this upload over.") from None
            self.held = not release

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None


class S3Uploads(Uploads):
    def __init__(self, storage: "S3Storage", expiry: timedelta):
        self.storage = storage
        self.expiry = expiry
        self.chains = HashChains()

    # --- the state record ------------------------------------------------------------------

    def _key(self, upload_id: str, name: str) -> str:
        return f"{PREFIX}{upload_id}/{name}"

    async def _read_state(self, upload_id: str) -> tuple[dict[str, Any], str]:
        if not _ID.match(upload_id):
            raise NotFound("No such upload.")
        try:
            response = await self.storage.call("get_object", Key=self._key(upload_id, "state"))
        except NotFound:
            raise NotFound("No such upload.") from None
        async with response["Body"] as body:
            record: dict[str, Any] = json.loads(await body.read())
        return record, response["ETag"]

    async def _write_state(
        self,
        record: dict[str, Any],
        *,
        if_match: str | None = None,
        create: bool = False,
        touch: bool = True,
    ) -> str:
        """Write the state record; `touch` starts its expiry anew (a request's writes do,
        the sweep's do not: an expired upload must not look fresh while it is removed)."""
        touched = time.time() if touch or "touched" not in record else record["touched"]
        params: dict[str, Any] = {
            "Key": self._key(record["id"], "state"),
            "Body": json.dumps({**record, "touched": touched}),
            "ContentType": "application/json",
        }
        if if_match is not None:
            params["IfMatch"] = if_match
        if create:
            params["IfNoneMatch"] = "*"
        response = await self.storage.call("put_object", **params)
        etag: str = response["ETag"]
        return etag

    def _public(self, record: Mapping[str, Any]) -> UploadState:
        return UploadState(
            id=record["id"],
            key=record["key"],
            length=record["length"],
            offset=record["offset"],
            metadata=record["metadata"],
            content_type=record["content_type"],
            filename=record["filename"],
            expires=datetime.fromtimestamp(record["touched"], UTC) + self.expiry,
            object=ObjectInfo.from_json(record["object"]) if record["object"] else None,
        )

    async def _current(self, upload_id: str) -> tuple[dict[str, Any], str]:
        record, etag = await self._read_state(upload_id)
        if self._public(record).expires <= _now():
            raise Gone()
        return record, etag

    # --- the capability ---------------------------------------------------------------------

    async def create(self, spec: UploadSpec) -> UploadState:
        record: dict[str, Any] = {
            "id": spec.id,
            "key": spec.key,
            "length": spec.length,
            "offset": 0,
            "metadata": dict(spec.metadata),
            "content_type": spec.content_type,
            "filename": spec.filename,
            "upload_id": None,
            "parts": [],
            "tail": 0,
            "object": None,
            "lease": None,
            "touched": time.time(),
        }
        await self._write_state(record, create=True)
        return await self.info(spec.id)

    async def info(self, upload_id: str) -> UploadState:
        record, _ = await self._current(upload_id)
        return self._public(record)

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
        record, etag = await self._current(upload_id)
        if admit is not None:
            admit(self._public(record))
        if offset != record["offset"]:
            raise OffsetMismatch(record["offset"], offset)
        if record["object"] is not None:
            return self._public(record)
        lease = _Lease(self, record, etag)
        await lease.take()
        try:
            record = self._declare_length(record, length)
            if record["length"] is None or offset < record["length"]:
                record = await self._receive(lease, record, chunks, checksum)
            if record["length"] == record["offset"]:
                record = await self._complete(record)
            await lease.save(record, release=True)
        finally:
            await lease.release()
            if lease.held:  # an error left the lease held: hand it back
                with contextlib.suppress(GatewayError):
                    await lease.save(lease.state, release=True)
        return self._public(record)

    def _declare_length(self, record: dict[str, Any], length: int | None) -> dict[str, Any]:
        if length is None:
            return record
        if record["length"] is not None and length != record["length"]:
            raise BadRequest(f"The upload's length is {record['length']}; it cannot change.")
        if length < record["offset"]:
            raise BadRequest("Upload-Length is below the upload's offset.")
        return {**record, "length": length}

    async def _receive(
        self,
        lease: _Lease,
        record: dict[str, Any],
        chunks: Chunks,
        checksum: tuple[str, bytes] | None,
    ) -> dict[str, Any]:
        storage, upload_id = self.storage, record["id"]
        room = None if record["length"] is None else record["length"] - record["offset"]
        gathered = Gatherer(storage.buffers, storage.part_size, await self._read_tail(record))
        upload = S3Multipart(
            storage, record["key"], _spec(record), record["upload_id"], record["parts"]
        )
        send = partial(self._send, upload)
        object_hash = self.chains.take(upload_id, record["offset"])
        chunk_hash = hashlib.new(checksum[0]) if checksum else None
        hashing = BackgroundHashes([h for h in (object_hash, chunk_hash) if h is not None])
        received = 0
        keep = True
        timed_out: RequestTimeout | None = None
        try:
            try:
                async for chunk in chunks:
                    received += len(chunk)
                    if room is not None and received > room:
                        raise TooLarge("The chunk goes past the upload's length.")
                    await hashing.add(chunk)
                    await gathered.add(chunk, send)
                await hashing.done()
            except BROKEN_OFF as exc:
                keep = checksum is None  # what arrived counts, unless it cannot be verified
                if not keep:
                    raise
                object_hash = None
                # a stalled client is told so, once what it sent is saved
                timed_out = exc if isinstance(exc, RequestTimeout) else None
            except BaseException:
                keep = False
                raise
            finally:
                if not keep:
                    await asyncio.shield(upload.drain_quietly())
            if chunk_hash is not None and checksum and chunk_hash.digest() != checksum[1]:
                await upload.drain_quietly()
                raise ChunkChecksumMismatch()
            offset = record["offset"] + received
            last = record["length"] is not None and offset == record["length"]
            if last and (gathered.size or not upload.parts):
                await gathered.flush(send)
            await upload.drain()
            tail = gathered.size
            await self._write_tail(upload_id, gathered.body(), tail, record["tail"])
        finally:
            await hashing.settle()
            gathered.release()
        record = {
            **record,
            "offset": offset,
            "upload_id": upload.upload_id,
            "parts": upload.parts,
            "tail": tail,
        }
        self.chains.keep(upload_id, offset, object_hash)
        if last:  # saved before the upload is completed, which a crash may interrupt
            await lease.save(record)
        else:  # saved with the lease's release, or by `append` if that fails
            lease.state = record
        if timed_out is not None:
            raise timed_out
        return record

    async def _send(self, upload: S3Multipart, part: Part) -> None:
        try:
            if upload.upload_id is None:
                await upload.start()
            loop = asyncio.get_running_loop()
            checksum = await loop.run_in_executor(
                None, part_checksum, part.data(), self.storage.part_checksum
            )
        except BaseException:
            part.release()
            raise
        await upload.send(checksum, part)

    async def _read_tail(self, record: Mapping[str, Any]) -> Part | None:
        """A part buffer holding the bytes a former request left short of a part (None
        when there are none)."""
        if not record["tail"]:
            return None
        part = await self.storage.buffers.reserve(self.storage.part_size)
        try:
            response = await self.storage.call("get_object", Key=self._key(record["id"], "tail"))
            body = response["Body"]
            async with body:
                while chunk := await body.read(1024 * 1024):
                    if part.fill(chunk) < len(chunk):
                        break
            if part.size != record["tail"]:
                raise Conflict("The upload's stored tail does not match its state.")
        except BaseException:
            part.release()
            raise
        return part

    async def _write_tail(
        self, upload_id: str, body: PartBody | bytearray, size: int, stored: int
    ) -> None:
        """Keep what falls short of a part in the tail object (`stored`: its size now)."""
        key = self._key(upload_id, "tail")
        if size:
            await self.storage.call("put_object", Key=key, Body=body)
        elif stored:
            await self.storage.call("delete_object", Key=key)

    async def _complete(self, record: dict[str, Any]) -> dict[str, Any]:
        upload_id, key = record["id"], record["key"]
        chain = self.chains.take(upload_id, record["offset"])
        if record["upload_id"] is None:  # nothing was ever sent: an empty object
            info = await self.storage.put(key, _nothing(), _spec(record))
            return {**record, "object": info.to_json()}
        upload = S3Multipart(self.storage, key, _spec(record), record["upload_id"], record["parts"])
        etag, completed_at = await upload.finish()
        if chain is not None:
            sha256 = chain.hexdigest()
        else:  # the hash chain broke (another instance, a restart): read the object back
            sha256 = await self._hash_back(key)
        upload.info = ObjectInfo(
            key=key,
            size=record["offset"],
            etag=f'"{sha256}"',
            sha256=sha256,
            content_type=record["content_type"],
            last_modified=completed_at or _now(),
            filename=record["filename"],
            metadata={},
        )
        info = await upload.record_sha256(etag, completed_at)
        await self.storage.call("delete_object", Key=self._key(upload_id, "tail"))
        return {**record, "object": info.to_json(), "upload_id": None, "parts": []}

    async def _hash_back(self, key: str) -> str:
        digest = hashlib.sha256()
        hashing = BackgroundHashes([digest])
        reader = await self.storage.open(key)
        try:
            async with reader:
                async for chunk in reader.chunks():
                    await hashing.add(chunk)
            await hashing.done()
        finally:
            await hashing.settle()
        return digest.hexdigest()

    async def terminate(self, upload_id: str) -> None:
        record, etag = await self._current(upload_id)
        lease = _Lease(self, record, etag)
        await lease.take()
        try:
            await self._remove(record)
        finally:
            await lease.release()

    async def _remove(self, record: Mapping[str, Any]) -> None:
        upload_id = record["id"]
        self.chains.drop(upload_id)
        if record.get("upload_id"):
            with contextlib.suppress(NotFound):
                await self.storage.call(
                    "abort_multipart_upload", Key=record["key"], UploadId=record["upload_id"]
                )
        for name in ("tail", "state"):
            await self.storage.call("delete_object", Key=self._key(upload_id, name))

    async def owned_multipart_uploads(self) -> set[str]:
        """The S3 upload ids of every resumable upload, which the stale-upload sweep spares."""
        return {
            record["upload_id"] async for record, _ in self._records() if record.get("upload_id")
        }

    async def _records(self) -> AsyncIterator[tuple[dict[str, Any], str]]:
        params: dict[str, Any] = {"Prefix": PREFIX}
        while True:
            page = await self.storage.call("list_objects_v2", **params)
            for entry in page.get("Contents", []):
                if entry["Key"].endswith("/state"):
                    with contextlib.suppress(NotFound, ValueError):
                        yield await self._read_state(entry["Key"][len(PREFIX) : -len("/state")])
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def sweep(self) -> int:
        expired = 0
        async for record, etag in self._records():
            if self._public(record).expires > _now():
                continue
            lease = _Lease(self, record, etag, touch=False)
            try:
                await lease.take()
            except Locked:
                continue
            try:
                await self._remove(record)
            finally:
                await lease.release()
            expired += record["object"] is None
        return expired


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


def _spec(record: Mapping[str, Any]) -> WriteSpec:
    return WriteSpec(content_type=record["content_type"], filename=record["filename"])
