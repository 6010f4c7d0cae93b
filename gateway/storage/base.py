"""The storage interface that every backend implements, and the values it trades in.

A backend stores objects (bytes plus `ObjectInfo`) under keys:

    staged = await storage.stage(key, chunks, spec)   # consume the chunks, verify, hold
    info = await staged.commit()                      # atomically visible at `key`
    # or: await staged.discard()                      # nothing left behind
    info = await storage.put(key, chunks, spec)       # the two above in one call

    reader = await storage.open(key, range_spec)      # info + the bytes, always aclose()d
    info = await storage.stat(key)
    await storage.delete(key)
    listing = await storage.list(prefix, delimiter, cursor, limit)

Backends know nothing of HTTP; they raise the errors of `gateway.errors` (NotFound,
PreconditionFailed for a create-only put that lost, ChecksumMismatch, BackendError, ...).
A failure of any kind while staging leaves nothing behind.
"""

import abc
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from ..ranges import ByteRange, RangeSpec

if TYPE_CHECKING:
    from ..settings import Settings

Buffer = bytes | bytearray | memoryview
Chunks = AsyncIterable[Buffer]


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # strong and quoted, as in the ETag header
    sha256: str  # hex
    content_type: str
    last_modified: datetime  # aware, UTC
    filename: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            "sha256": self.sha256,
            "content_type": self.content_type,
            "last_modified": self.last_modified.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "filename": self.filename,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "ObjectInfo":
        modified = datetime.strptime(value["last_modified"], "%Y-%m-%dT%H:%M:%S.%fZ")
        return cls(
            key=value["key"],
            size=value["size"],
            etag=value["etag"],
            sha256=value["sha256"],
            content_type=value["content_type"],
            last_modified=modified.replace(tzinfo=UTC),
            filename=value["filename"],
            metadata=value["metadata"],
        )


def etag_for(sha256_hex: str) -> str:
    """Strong entity tag of a body: its SHA-256, so equal bytes mean equal tags everywhere."""
    return f'"{sha256_hex}"'


@dataclass(frozen=True)
class WriteSpec:
    """What a client asked for when storing an object, besides its bytes."""

    content_type: str = "application/octet-stream"
    filename: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    create_only: bool = False  # If-None-Match: *
    expect_md5: bytes | None = None  # Content-MD5, decoded
    expect_sha256: str | None = None  # X-Checksum-SHA256, lower-case hex
    size_hint: int | None = None  # the size announced (Content-Length), if any
    grouped: bool = False  # staged to wait for other objects (a form's files) before commit


@dataclass(frozen=True)
class Listing:
    objects: list[ObjectInfo]
    prefixes: list[str]
    next_cursor: str | None


class Staged(abc.ABC):
    """An object whose bytes are stored and verified but not yet visible."""

    info: ObjectInfo

    @abc.abstractmethod
    async def commit(self) -> ObjectInfo: ...

    @abc.abstractmethod
    async def discard(self) -> None: ...


class ObjectReader(abc.ABC):
    """An open object: its info, the range being served (None: all of it), and its bytes."""

    info: ObjectInfo
    range: ByteRange | None

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]: ...

    def file(self) -> tuple[int, int, int] | None:
        """Where the bytes are, if in a local file: its descriptor, the offset and the
        length of the bytes to serve (which a server may then send with sendfile(2)).
        None (the default): only `chunks` has them."""
        return None

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    async def __aenter__(self) -> "ObjectReader":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass(frozen=True)
class UploadState:
    """A resumable upload, as its backend keeps it (nothing of it lives in process memory)."""

    id: str
    key: str  # where the object goes once complete
    length: int | None  # None until a deferred length is declared
    offset: int
    metadata: Mapping[str, str]  # Upload-Metadata, as the client gave it
    content_type: str
    filename: str | None
    expires: datetime
    object: ObjectInfo | None = None  # the committed object, once the last byte arrived


@dataclass(frozen=True)
class UploadSpec:
    id: str  # chosen by the caller: 32 lower-case hex digits
    key: str
    length: int | None
    metadata: Mapping[str, str]
    content_type: str
    filename: str | None


class Uploads(abc.ABC):
    """The resumable-upload capability (tus): bytes appended at an offset, in as many
    requests as it takes, on any instance, until the object is committed at its key."""

    @abc.abstractmethod
    async def create(self, spec: UploadSpec) -> UploadState: ...

    @abc.abstractmethod
    async def info(self, upload_id: str) -> UploadState:
        """NotFound for an unknown or terminated upload, Gone for an expired one."""

    @abc.abstractmethod
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
        """Append at `offset`: OffsetMismatch if it is not the upload's offset, Locked if
        another request is appending, ChunkChecksumMismatch (the chunk discarded) if
        `checksum` does not match, TooLarge past the upload's length. Bytes received before
        the body broke off count. Commits the object when the last byte arrives. `length`
        declares a deferred length (BadRequest if the upload has another one, or if it is
        below the offset).

        `admit` judges the request on the upload's state as this call reads it, before
        the offset is checked and before a byte is read: whatever it raises refuses the
        request (a route's authorization, so that one read of the state serves both). It
        may run in a worker thread."""

    @abc.abstractmethod
    async def terminate(self, upload_id: str) -> None: ...

    @abc.abstractmethod
    async def sweep(self) -> int:
        """Remove expired uploads (finished ones too, once expired); return how many."""


class Storage(abc.ABC):
    """A storage backend. Open it with `async with`, which also sweeps leftovers."""

    name: str
    uploads: Uploads | None = None  # the resumable-upload capability, where a backend has it

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: "Settings") -> "Storage": ...

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect, create what is missing, sweep what earlier runs left behind."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads."""

    @abc.abstractmethod
    async def stage(self, key: str, chunks: Chunks, spec: WriteSpec) -> Staged: ...

    async def put(self, key: str, chunks: Chunks, spec: WriteSpec) -> ObjectInfo:
        staged = await self.stage(key, chunks, spec)
        try:
            return await staged.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await staged.discard()
            raise

    @abc.abstractmethod
    async def open(self, key: str, spec: RangeSpec | None = None) -> ObjectReader:
        """Open `key` for reading, the range resolved against its size (416 if it can't be)."""

    @abc.abstractmethod
    async def stat(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None: ...

    @abc.abstractmethod
    async def list(
        self,
        prefix: str = "",
        delimiter: str | None = None,
        cursor: str | None = None,
        limit: int = 1000,
    ) -> Listing: ...

    @abc.abstractmethod
    async def check(self) -> None:
        """Return if the backend answers; raise BackendUnavailable if not."""
