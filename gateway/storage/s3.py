"""The S3 backend (AWS S3, MinIO, Ceph, R2, moto), on one aioboto3 client per process.

Layout in the bucket: each object at its key, with

    x-amz-meta-sha256       SHA-256 of the body (hex), our ETag; for a multipart object,
                            the object tags `sha256` and `etag` instead (see s3_upload.py)
    x-amz-meta-filename     the sanitized filename, percent-encoded
    x-amz-meta-m-<name>     user metadata, values percent-encoded (S3 headers are ASCII)
    Content-Type            as given
    .gateway/...            the gateway's bookkeeping: hidden from listings

Reads are one GetObject with the Range passed through (plus GetObjectTagging for a
multipart object); listings are ListObjectsV2 with a HeadObject per object, since it
returns no metadata. An object written by another tool has no SHA-256: its ETag is S3's.
botocore's errors become the gateway's in `call()`, and only there.

IAM permissions used: s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucket,
s3:GetObjectTagging, s3:PutObjectTagging, s3:AbortMultipartUpload,
s3:ListBucketMultipartUploads.
"""

import asyncio
import contextlib
import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

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
from .base import Chunks, Listing, ObjectInfo, ObjectReader, Staged, Storage, WriteSpec
from .cursor import decode_cursor, encode_cursor
from .s3_aborts import FIRST_TRY_WAIT, Aborter
from .s3_body import register_part_payload
from .s3_upload import HELD_SMALL_BYTES, BufferPool, HeldBytes, PartChecksum, S3Writer, Unsupported
from .s3_uploads import S3Uploads

MiB = 1024 * 1024
MAX_PARTS = 10_000
PARTS_PER_PROCESS = 8  # part buffers held at once over all uploads (at least one upload's)
SWEEP_INTERVAL = 600.0  # seconds between sweeps, at most
HEAD_CONCURRENCY = 16  # HeadObject calls in flight while a listing page is filled in
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_UNREACHABLE_CODES = {"RequestTimeout", "ServiceUnavailable", "SlowDown"}


def info_from_head(
    key: str, head: Mapping[str, Any], size: int | None = None, sha256: str = ""
) -> ObjectInfo:
    """ObjectInfo from a HeadObject or GetObject response (and the SHA-256 of its tags)."""
    stored = head.get("Metadata", {})
    sha256 = stored.get("sha256", sha256)
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
        self.tagging = True  # until the server says it has no object tagging
        self.buffers = BufferPool(
            max(PARTS_PER_PROCESS, self.concurrency + 1), keep=self.concurrency + 1
        )
        self.held_small = HeldBytes(HELD_SMALL_BYTES)
        self.aborter = Aborter(
            self._abort_upload, min(FIRST_TRY_WAIT, settings.s3_read_timeout.total_seconds())
        )
        # multipart uploads this process is sending: no sweep touches them, whatever age S3
        # gives them (moto dates every upload 2010)
        self.active: set[str] = set()
        self.resumable = S3Uploads(self, settings.upload_expiry)
        self.uploads = self.resumable
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "S3Storage":
        return cls(settings)

    # --- the client, and the one place where its errors become ours -------------------

    async def start(self) -> None:
        import aioboto3
        from botocore.config import Config

        register_part_payload()

        settings = self.settings
        config = Config(
            region_name=settings.s3_region,
            s3={"addressing_style": settings.s3_addressing_style},
            # botocore's standard retries (throttling, 5xx, dropped connections, timeouts),
            # few and short, so that a client learns of a backend that is down or stalls
            # within S3_MAX_ATTEMPTS x S3_READ_TIMEOUT and a few seconds of backoff
            # (botocore's `max_attempts` counts the retries alone: `total_max_attempts` is
            # the number of tries)
            retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
            # every upload may have S3_MAX_CONCURRENCY parts in flight
            max_pool_connections=max(64, 16 * settings.s3_max_concurrency),
            connect_timeout=settings.s3_connect_timeout.total_seconds(),
            # aiohttp starts the read timeout once a request is handed to the socket, whose
            # buffers may still hold megabytes of a part: on a slow link, keep it well above
            # the time they take to drain
            read_timeout=settings.s3_read_timeout.total_seconds(),
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
        self._client.meta.events.register_last("before-call.s3", _no_expect_continue)
        with contextlib.suppress(GatewayError):
            await self.sweep(older_than=settings.upload_expiry)
        self._sweeper = asyncio.create_task(self._sweep_now_and_then())

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.aborter.close()
        await self._stack.aclose()

    async def _sweep_now_and_then(self) -> None:
        """A CreateMultipartUpload that timed out, or whose answer was lost, may still have
        created an upload nobody knows the id of: sweep while running, not only at start."""
        expiry = self.settings.upload_expiry
        while True:
            await asyncio.sleep(min(expiry.total_seconds() / 4, SWEEP_INTERVAL))
            with contextlib.suppress(GatewayError):
                await self.sweep(older_than=expiry)

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

    async def _abort_upload(self, key: str, upload_id: str) -> None:
        await self.call("abort_multipart_upload", Key=key, UploadId=upload_id)

    async def sweep(self, older_than: timedelta) -> None:
        """Abort multipart uploads that a crashed process left open for `older_than`."""
        cutoff = datetime.now(UTC) - older_than
        resumable = await self.resumable.owned_multipart_uploads()
        params: dict[str, Any] = {}
        while True:
            page = await self.call("list_multipart_uploads", **params)
            for upload in page.get("Uploads", []):
                if (
                    upload["Initiated"] < cutoff
                    and upload["UploadId"] not in resumable
                    and upload["UploadId"] not in self.active
                    and not upload["Key"].startswith(RESERVED_PREFIX)
                ):
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
        writer = S3Writer(self, key, spec, self.part_size_for(spec.size_hint))
        try:
            async for chunk in chunks:
                await writer.write(chunk)
            return await writer.finish()
        except BaseException:
            await asyncio.shield(writer.abort())
            raise

    # --- reading -----------------------------------------------------------------------

    async def stat(self, key: str) -> ObjectInfo:
        head = await self.call("head_object", Key=key)
        return info_from_head(key, head, sha256=await self._tagged_sha256(key, head))

    async def _tagged_sha256(self, key: str, head: Mapping[str, Any]) -> str:
        """The SHA-256 a multipart object carries in its tags, if they describe this version."""
        etag = head["ETag"].strip('"')
        if "sha256" in head.get("Metadata", {}) or "-" not in etag or not self.tagging:
            return ""
        try:
            tagging = await self.call("get_object_tagging", Key=key)
        except (NotFound, Unsupported):
            return ""
        tags = {tag["Key"]: tag["Value"] for tag in tagging.get("TagSet", [])}
        return tags.get("sha256", "") if tags.get("etag") == etag else ""

    async def open(self, key: str, spec: RangeSpec | None = None) -> ObjectReader:
        params: dict[str, Any] = {"Key": key}
        if spec is not None:
            params["Range"] = range_header(spec)
        try:
            response = await self.call("get_object", **params)
        except RangeNotSatisfiable:
            raise RangeNotSatisfiable((await self.stat(key)).size) from None
        body = response["Body"]
        try:
            byte_range = None
            size = int(response["ContentLength"])
            content_range = _CONTENT_RANGE.match(response.get("ContentRange", ""))
            if spec is not None and content_range:
                start, end, size = (int(group) for group in content_range.groups())
                byte_range = ByteRange(start, end, size)
            sha256 = await self._tagged_sha256(key, response)
        except BaseException:
            body.close()
            raise
        return S3Reader(info_from_head(key, response, size, sha256), byte_range, body)

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


class S3Reader(ObjectReader):
    def __init__(self, info: ObjectInfo, byte_range: ByteRange | None, body: Any):
        self.info, self.range, self.body = info, byte_range, body
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as aiohttp receives it. Its `read(n)` would join received chunks into
        blocks of n bytes: one more copy of every byte, for nothing."""
        from aiohttp import ClientError
        from botocore.exceptions import BotoCoreError

        expected = self.range.length if self.range else self.info.size
        received = 0
        try:
            while chunk := await self.body.content.readany():
                received += len(chunk)
                yield chunk
        except (TimeoutError, BotoCoreError, ClientError, OSError) as exc:
            raise BackendError("The backend stopped sending the object.") from exc
        if received != expected:
            raise BackendError("The backend sent a shorter object than it announced.")

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # An unread body cannot go back to the pool: close() drops its connection.
            self.body.close()


def _no_expect_continue(params: dict[str, Any], **_: Any) -> None:
    """botocore asks for `100 Continue` before sending a body, and aiohttp waits for it
    without any timeout: an S3 that stalls would hold the request for ever. Bodies here are
    one part at most, so sending them straight away costs little."""
    params.get("headers", {}).pop("Expect", None)


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
    if code == "NotImplemented" or status == 501:
        return Unsupported(f"The storage backend does not implement {code or status}.")
    if code in _UNREACHABLE_CODES or status == 503:
        return BackendUnavailable()
    return BackendError(f"The storage backend refused the request ({code or status}).")


def _translate_transport(exc: Exception) -> GatewayError:
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError

    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return BackendUnavailable()
    return BackendError()
