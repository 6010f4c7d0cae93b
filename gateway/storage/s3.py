"""The S3 backend (AWS S3, MinIO, Ceph, R2, moto), on one aioboto3 client per process.

Layout in the bucket: each object at its key, with

    x-amz-meta-sha256       SHA-256 of the body (hex): our ETag
    x-amz-meta-filename     the sanitized filename, percent-encoded
    x-amz-meta-m-<name>     user metadata, values percent-encoded (S3 headers are ASCII)
    Content-Type            as given

Writes: a body shorter than the part size is held in memory (at most one part) and stored
with one PutObject. A longer one becomes a multipart upload whose parts go out while the
request is still being read, up to `S3_MAX_CONCURRENCY` at a time, so an upload holds at
most part size x (parts in flight + 1) bytes and never touches the disk. S3 fixes an
object's metadata when the upload starts, before the SHA-256 is known, so a multipart
object is completed at its key and then copied onto itself with the SHA-256 added (a
server-side copy, conditional on the ETag of the version just completed, so a newer
writer's object is never given our metadata). Until that copy lands, a reader sees the
object without a SHA-256: its ETag is then S3's own.

Every part carries a CRC32 (or Content-MD5) that S3 verifies; the SHA-256 (and MD5, when
a client sent Content-MD5) of the whole body is computed here and checked before the
commit. Any failure ends in AbortMultipartUpload.

IAM permissions used: s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucket,
s3:AbortMultipartUpload, s3:ListBucketMultipartUploads.
"""

import asyncio
import base64
import contextlib
import math
import re
import zlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import quote, unquote

from ..digests import Digests
from ..errors import (
    BackendError,
    BackendUnavailable,
    BadRequest,
    GatewayError,
    NotFound,
    PreconditionFailed,
    RangeNotSatisfiable,
)
from ..keys import RESERVED_PREFIX
from ..ranges import ByteRange, RangeSpec
from ..settings import Settings
from .base import Buffer, Chunks, Listing, ObjectInfo, ObjectReader, Staged, Storage, WriteSpec
from .cursor import decode_cursor, encode_cursor

MiB = 1024 * 1024
MAX_PARTS = 10_000
MAX_COPY_BYTES = 5 * 1000**3  # the largest object one CopyObject may copy
READ_CHUNK = MiB
HEAD_CONCURRENCY = 16  # HeadObject calls in flight while a listing page is filled in
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_UNREACHABLE_CODES = {"RequestTimeout", "ServiceUnavailable", "SlowDown"}
_SAFE = "/ !#$&'()*+,-.:;=?@[]^_`{|}~"

PartChecksum = Literal["crc32", "md5"]


def _encode(value: str) -> str:
    return quote(value, safe=_SAFE)


def object_metadata(info: ObjectInfo) -> dict[str, str]:
    metadata = {f"m-{name}": _encode(value) for name, value in info.metadata.items()}
    if info.filename is not None:
        metadata["filename"] = _encode(info.filename)
    if info.sha256:
        metadata["sha256"] = info.sha256
    return metadata


def info_from_head(key: str, head: Mapping[str, Any], size: int | None = None) -> ObjectInfo:
    """ObjectInfo from a HeadObject or GetObject response."""
    stored = head.get("Metadata", {})
    sha256 = stored.get("sha256", "")
    filename = stored.get("filename")
    return ObjectInfo(
        key=key,
        size=size if size is not None else int(head["ContentLength"]),
        etag=f'"{sha256}"' if sha256 else head["ETag"],
        sha256=sha256,
        content_type=head.get("ContentType") or "application/octet-stream",
        last_modified=head["LastModified"].astimezone(UTC),
        filename=unquote(filename) if filename is not None else None,
        metadata={
            name[2:]: unquote(value) for name, value in stored.items() if name.startswith("m-")
        },
    )


def range_header(spec: RangeSpec) -> str:
    first = "" if spec.first is None else str(spec.first)
    last = "" if spec.last is None else str(spec.last)
    return f"bytes={first}-{last}"


def _join_and_check(
    chunks: list[Buffer], digests: Digests, checksum: PartChecksum
) -> tuple[bytes, dict[str, str]]:
    """One part as bytes, hashed into the object's digests, with its own checksum for S3
    (runs in a worker thread; hashlib and zlib release the GIL)."""
    digests.update(chunks)
    data = b"".join(chunks)
    if checksum == "md5":
        import hashlib

        digest = hashlib.md5(data, usedforsecurity=False).digest()
        return data, {"ContentMD5": base64.b64encode(digest).decode()}
    crc = zlib.crc32(data).to_bytes(4, "big")
    return data, {"ChecksumCRC32": base64.b64encode(crc).decode()}


async def _parts(chunks: Chunks, part_size: int) -> AsyncIterator[list[Buffer]]:
    """The body cut into lists of chunks of at least `part_size` bytes (the last shorter)."""
    part: list[Buffer] = []
    held = 0
    async for chunk in chunks:
        if not chunk:
            continue
        part.append(chunk)
        held += len(chunk)
        if held >= part_size:
            yield part
            part, held = [], 0
    yield part  # the last part: possibly empty


class S3Storage(Storage):
    name = "s3"

    def __init__(self, settings: Settings):
        if not settings.s3_bucket:
            raise ValueError("the s3 backend needs GATEWAY_S3_BUCKET")
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.part_size = int(settings.s3_part_size)
        self.concurrency = settings.s3_max_concurrency
        self.part_checksum: PartChecksum = settings.s3_part_checksum
        self._stack = AsyncExitStack()
        self._client: Any = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "S3Storage":
        return cls(settings)

    # --- the client, and the one place where its errors become ours -------------------

    async def start(self) -> None:
        import aioboto3
        from botocore.config import Config

        settings = self.settings
        config = Config(
            region_name=settings.s3_region,
            s3={"addressing_style": settings.s3_addressing_style},
            # botocore's standard retries (throttling, 5xx, dropped connections), kept short
            # so that a client learns of an unreachable backend within seconds
            retries={"mode": "standard", "max_attempts": 3},
            # every upload may have S3_MAX_CONCURRENCY parts in flight
            max_pool_connections=max(64, 16 * settings.s3_max_concurrency),
            connect_timeout=5,
            read_timeout=120,
            tcp_keepalive=True,
            # S3-compatible servers (older MinIO, Ceph, R2) do not all accept the
            # aws-chunked checksum trailers that botocore sends by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = aioboto3.Session()
        self._client = await self._stack.enter_async_context(
            session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)
        )
        with contextlib.suppress(GatewayError):
            await self.sweep(older_than=settings.upload_expiry)

    async def close(self) -> None:
        await self._stack.aclose()

    async def call(self, operation: str, **params: Any) -> Any:
        """Call one S3 operation, with botocore's errors translated into the gateway's."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await getattr(self._client, operation)(Bucket=self.bucket, **params)
        except ClientError as exc:
            raise _translate(exc) from exc
        except BotoCoreError as exc:
            raise _translate_transport(exc) from exc

    async def check(self) -> None:
        await self.call("head_bucket")

    async def sweep(self, older_than: timedelta) -> None:
        """Abort multipart uploads that a crashed process left open for `older_than`."""
        cutoff = datetime.now(UTC) - older_than
        params: dict[str, Any] = {}
        while True:
            page = await self.call("list_multipart_uploads", **params)
            for upload in page.get("Uploads", []):
                if upload["Initiated"] < cutoff and not upload["Key"].startswith(RESERVED_PREFIX):
                    with contextlib.suppress(GatewayError):
                        await self.call(
                            "abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"]
                        )
            if not page.get("IsTruncated"):
                return
            params = {
                "KeyMarker": page["NextKeyMarker"],
                "UploadIdMarker": page["NextUploadIdMarker"],
            }

    # --- writing -----------------------------------------------------------------------

    def part_size_for(self, size_hint: int | None) -> int:
        """The configured part size, grown (in MiB steps) to keep within 10,000 parts."""
        largest = size_hint if size_hint is not None else int(self.settings.max_upload_bytes)
        needed = math.ceil(largest / MAX_PARTS / MiB) * MiB
        return max(self.part_size, needed)

    async def stage(self, key: str, chunks: Chunks, spec: WriteSpec) -> Staged:
        digests = Digests(spec)
        part_size = self.part_size_for(spec.size_hint)
        parts = aiter(_parts(chunks, part_size))
        data, checksum = await self._prepare(await anext(parts), digests)
        if len(data) < part_size:  # only the last part is short: this is the whole body
            digests.verify()
            return S3SmallStaged(self, self._info(key, digests, spec), data, checksum, spec)
        upload = S3Multipart(self, key, spec, digests)
        try:
            await upload.start()
            await upload.send(data, checksum)
            del data
            async for part in parts:
                if part:
                    await upload.send(*await self._prepare(part, digests))
            await upload.drain()
            digests.verify()
        except BaseException:
            await asyncio.shield(upload.abort())
            raise
        upload.info = self._info(key, digests, spec)
        return upload

    async def _prepare(self, part: list[Buffer], digests: Digests) -> tuple[bytes, dict[str, str]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, _join_and_check, part, digests, self.part_checksum)

    def _info(self, key: str, digests: Digests, spec: WriteSpec) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=digests.size,
            etag=f'"{digests.sha256}"',
            sha256=digests.sha256,
            content_type=spec.content_type,
            last_modified=datetime.now(UTC),
            filename=spec.filename,
            metadata=dict(spec.metadata),
        )

    # --- reading -----------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        return info_from_head(key, await self.call("head_object", Key=key))

    async def open(self, key: str, spec: RangeSpec | None = None) -> ObjectReader:
        params: dict[str, Any] = {"Key": key}
        if spec is not None:
            params["Range"] = range_header(spec)
        try:
            response = await self.call("get_object", **params)
        except RangeNotSatisfiable:
            raise RangeNotSatisfiable((await self.stat(key)).size) from None
        byte_range = None
        size = int(response["ContentLength"])
        if spec is not None and (match := _CONTENT_RANGE.match(response.get("ContentRange", ""))):
            start, end, size = (int(group) for group in match.groups())
            byte_range = ByteRange(start, end, size)
        return S3Reader(info_from_head(key, response, size), byte_range, response["Body"])

    async def delete(self, key: str) -> None:
        await self.stat(key)  # S3's DeleteObject succeeds on missing keys; the API says 404
        await self.call("delete_object", Key=key)

    async def list(
        self,
        prefix: str = "",
        delimiter: str | None = None,
        cursor: str | None = None,
        limit: int = 1000,
    ) -> Listing:
        params: dict[str, Any] = {"Prefix": prefix, "MaxKeys": limit}
        if delimiter:
            params["Delimiter"] = delimiter
        if cursor:
            params["ContinuationToken"] = decode_cursor(cursor).decode("utf-8", "replace")
        try:
            page = await self.call("list_objects_v2", **params)
        except BadRequest:
            if cursor:
                raise BadRequest("The cursor is not one this gateway gave out.") from None
            raise
        keys = [
            entry["Key"]
            for entry in page.get("Contents", [])
            if not entry["Key"].startswith(RESERVED_PREFIX)
        ]
        prefixes = [
            entry["Prefix"]
            for entry in page.get("CommonPrefixes", [])
            if not entry["Prefix"].startswith(RESERVED_PREFIX)
        ]
        objects = await self._stat_all(keys)
        token = page.get("NextContinuationToken")
        return Listing([*objects], prefixes, encode_cursor(token.encode()) if token else None)

    async def _stat_all(self, keys: Sequence[str]) -> Sequence[ObjectInfo]:
        """Each listed object's info (ListObjectsV2 gives no metadata), HEADs in parallel;
        an object deleted since it was listed is left out."""
        limit = asyncio.Semaphore(HEAD_CONCURRENCY)

        async def stat(key: str) -> ObjectInfo | None:
            async with limit:
                try:
                    return await self.stat(key)
                except NotFound:
                    return None

        found = await asyncio.gather(*(stat(key) for key in keys))
        return [info for info in found if info is not None]


class S3SmallStaged(Staged):
    """A body shorter than one part, held in memory until its PutObject."""

    def __init__(
        self,
        storage: S3Storage,
        info: ObjectInfo,
        data: bytes,
        checksum: dict[str, str],
        spec: WriteSpec,
    ):
        self.storage, self.info, self.data, self.checksum = storage, info, data, checksum
        self.create_only = spec.create_only

    async def commit(self) -> ObjectInfo:
        params: dict[str, Any] = {
            "Key": self.info.key,
            "Body": self.data,
            "ContentType": self.info.content_type,
            "Metadata": object_metadata(self.info),
            **self.checksum,
        }
        if self.create_only:
            params["IfNoneMatch"] = "*"
        response = await self.storage.call("put_object", **params)
        self.data = b""
        return _with_time(self.info, response)

    async def discard(self) -> None:
        self.data = b""


class S3Multipart(Staged):
    """A multipart upload: its parts sent while the body is read, completed at commit."""

    def __init__(self, storage: S3Storage, key: str, spec: WriteSpec, digests: Digests):
        self.storage, self.key, self.spec, self.digests = storage, key, spec, digests
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.in_flight: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(storage.concurrency)
        self._done = False

    async def start(self) -> None:
        spec = self.spec
        params: dict[str, Any] = {
            "Key": self.key,
            "ContentType": spec.content_type,
            "Metadata": object_metadata(
                ObjectInfo(
                    key=self.key,
                    size=0,
                    etag="",
                    sha256="",
                    content_type=spec.content_type,
                    last_modified=datetime.now(UTC),
                    filename=spec.filename,
                    metadata=spec.metadata,
                )
            ),
        }
        if self.storage.part_checksum == "crc32":
            params["ChecksumAlgorithm"] = "CRC32"
        response = await self.storage.call("create_multipart_upload", **params)
        self.upload_id = response["UploadId"]

    async def send(self, data: bytes, checksum: dict[str, str]) -> None:
        """Start uploading the next part; wait only while all slots are taken."""
        self._raise_failures()
        await self.slots.acquire()
        number = len(self.parts) + 1
        self.parts.append({"PartNumber": number, **_part_entry(checksum)})
        task = asyncio.create_task(self._upload(number, data, checksum))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _upload(self, number: int, data: bytes, checksum: dict[str, str]) -> None:
        try:
            response = await self.storage.call(
                "upload_part",
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,
                **checksum,
            )
            self.parts[number - 1]["ETag"] = response["ETag"]
        finally:
            self.slots.release()

    def _raise_failures(self) -> None:
        for task in list(self.in_flight):
            if task.done() and not task.cancelled() and (error := task.exception()):
                raise error

    async def drain(self) -> None:
        """Wait for every part; the first failure is raised."""
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
            with contextlib.suppress(GatewayError):
                await self.storage.call(
                    "abort_multipart_upload", Key=self.key, UploadId=self.upload_id
                )

    async def discard(self) -> None:
        await asyncio.shield(self.abort())

    async def commit(self) -> ObjectInfo:
        assert not self._done, "already committed or discarded"
        storage = self.storage
        params: dict[str, Any] = {
            "Key": self.key,
            "UploadId": self.upload_id,
            "MultipartUpload": {"Parts": self.parts},
        }
        if self.spec.create_only:
            params["IfNoneMatch"] = "*"
        try:
            completed = await storage.call("complete_multipart_upload", **params)
        except BaseException:
            await asyncio.shield(self.abort())
            raise
        self._done = True
        return await self._add_sha256(completed["ETag"])

    async def _add_sha256(self, etag: str) -> ObjectInfo:
        """Copy the completed object onto itself with its SHA-256 in the metadata."""
        info = self.info
        if info.size > MAX_COPY_BYTES:
            return info  # too large for one CopyObject: it keeps S3's ETag
        # With CRC32 part checksums, the copy must compute the whole object's CRC32 anew:
        # otherwise it keeps the composite one, which some servers then report as wrong.
        checksum = {"ChecksumAlgorithm": "CRC32"} if self.storage.part_checksum == "crc32" else {}
        try:
            copied = await self.storage.call(
                "copy_object",
                **checksum,
                Key=info.key,
                CopySource={"Bucket": self.storage.bucket, "Key": info.key},
                CopySourceIfMatch=etag,
                MetadataDirective="REPLACE",
                ContentType=info.content_type,
                Metadata=object_metadata(info),
            )
        except PreconditionFailed:
            return info  # a newer version replaced ours meanwhile; it keeps its own metadata
        modified = copied["CopyObjectResult"]["LastModified"].astimezone(UTC)
        return _replace_time(info, modified)


def _part_entry(checksum: dict[str, str]) -> dict[str, str]:
    return {"ChecksumCRC32": checksum["ChecksumCRC32"]} if "ChecksumCRC32" in checksum else {}


def _replace_time(info: ObjectInfo, modified: datetime) -> ObjectInfo:
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


def _with_time(info: ObjectInfo, response: Mapping[str, Any]) -> ObjectInfo:
    """S3 returns no LastModified for a PutObject; its Date header is the nearest second."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return _replace_time(info, parsedate_to_datetime(date).astimezone(UTC))
    except (TypeError, ValueError):
        return info


class S3Reader(ObjectReader):
    def __init__(self, info: ObjectInfo, byte_range: ByteRange | None, body: Any):
        self.info, self.range, self.body = info, byte_range, body
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        from botocore.exceptions import BotoCoreError

        try:
            async for chunk in self.body.iter_chunks(READ_CHUNK):
                yield chunk
        except (BotoCoreError, OSError) as exc:
            raise BackendError("The backend stopped sending the object.") from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # An unread body cannot go back to the pool: close() drops its connection.
            self.body.close()


def _translate(exc: Any) -> GatewayError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in ("NoSuchKey", "NotFound") or (status == 404 and code != "NoSuchBucket"):
        return NotFound()
    if code == "PreconditionFailed" or status == 412:
        return PreconditionFailed()
    if code == "InvalidRange" or status == 416:
        return RangeNotSatisfiable(0)
    if code in ("InvalidArgument", "InvalidToken") and status == 400:
        return BadRequest("The storage backend refused an argument of the request.")
    if code in _UNREACHABLE_CODES or status == 503:
        return BackendUnavailable()
    return BackendError(f"The storage backend refused the request ({code or status}).")


def _translate_transport(exc: Exception) -> GatewayError:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return BackendUnavailable()
    return BackendError()
