"""What an upload request asks for: its key, its metadata and checksums, its bounded body."""

import base64
import binascii
import mimetypes
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

from starlette.requests import Request

from .errors import BadRequest, InvalidKey, TooLarge
from .keys import decode_path_key
from .pacing import paced
from .protocol import READ_INTO
from .settings import Settings
from .storage.base import Buffer, WriteSpec
from .storage.direct import aligned_buffer

# Bodies read into buffers (client_buffers) are read in chunks of 1 MiB, halved (down to
# 256 KiB) while four chunks a body, for all the bodies being read, would pass the
# budget: 1 MiB up to 16 bodies at once. A body holds the chunk being read and the
# batches its hashing and writing threads have yet to take (two of each, one when
# crowded: gateway.storage.local). Per byte, 256 KiB chunks cost about 40% more CPU
# than 1 MiB ones (16 tus uploads of 64 MiB: 1.38 s of CPU against 1.81 s per GiB).
CHUNK_MIN, CHUNK_MAX, CHUNK_BUDGET = 256 * 1024, 1024 * 1024, 64 * 1024 * 1024
CHUNK_START = 64 * 1024  # the first read of a body, and the next after a pause
_reading = 0  # bodies being read into buffers
B = TypeVar("B", bound=Buffer)
Whole = TypeVar("Whole", memoryview, bytearray)  # what a full buffer is handed on as

META_PREFIX = "x-meta-"
MAX_METADATA_BYTES = 2048
_SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


def path_key(request: Request, mount: str) -> str:
    """The key after `mount` (e.g. b"/objects/") in the raw, still percent-encoded path."""
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    raw = raw.split(b"?", 1)[0]
    at = raw.find(mount.encode())
    if at < 0:
        raise InvalidKey()
    return decode_path_key(raw[at + len(mount) :])


def guess_type(key: str) -> str:
    return mimetypes.guess_type(key, strict=False)[0] or "application/octet-stream"


def _header_text(value: str) -> str:
    """Header values arrive as latin-1; most clients meant UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def user_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """`X-Meta-Name: value` headers as {"name": "value"}, 2 KiB in all at most."""
    metadata = {
        name[len(META_PREFIX) :].lower(): _header_text(value)
        for name, value in headers.items()
        if name.lower().startswith(META_PREFIX) and len(name) > len(META_PREFIX)
    }
    size = sum(len(name.encode()) + len(value.encode()) for name, value in metadata.items())
    if size > MAX_METADATA_BYTES:
        raise BadRequest(f"User metadata may hold {MAX_METADATA_BYTES} bytes in all.")
    return metadata


def expected_md5(headers: Mapping[str, str]) -> bytes | None:
    value = headers.get("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise BadRequest("Content-MD5 must be the base64 of a 16-byte MD5 digest.")
    return digest


def expected_sha256(headers: Mapping[str, str]) -> str | None:
    value = headers.get("x-checksum-sha256")
    if value is None:
        return None
    if not _SHA256_HEX.match(value.strip()):
        raise BadRequest("X-Checksum-SHA256 must be 64 hexadecimal digits.")
    return value.strip().lower()


def create_only(headers: Mapping[str, str]) -> bool:
    value = headers.get("if-none-match")
    if value is None:
        return False
    if value.strip() != "*":
        raise BadRequest("On uploads, only `If-None-Match: *` is supported.")
    return True


def write_spec(request: Request, key: str) -> WriteSpec:
    headers = request.headers
    return WriteSpec(
        content_type=headers.get("content-type") or guess_type(key),
        metadata=user_metadata(headers),
        create_only=create_only(headers),
        expect_md5=expected_md5(headers),
        expect_sha256=expected_sha256(headers),
        size_hint=declared_size(request),
    )


def declared_size(request: Request) -> int | None:
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


def check_declared_size(request: Request, limit: int) -> None:
    """413 before reading a byte when Content-Length already says too much."""
    declared = declared_size(request)
    if declared is not None and declared > limit:
        raise too_large(limit)


def too_large(limit: int) -> TooLarge:
    # The rest of the body will not be read: the connection cannot be reused.
    return TooLarge(
        f"This gateway stores objects of at most {limit} bytes.", headers={"Connection": "close"}
    )


def client_body(request: Request) -> AsyncIterator[bytes]:
    """The request body as it arrives, closed with 408 when the client sends too little for
    too long (BODY_IDLE_TIMEOUT, BODY_MIN_RATE: see gateway.pacing)."""
    return _paced(request, request.stream())


def client_buffers(request: Request) -> AsyncIterator[Buffer]:
    """The request body as client_body gives it, read straight into aligned buffers of up
    to CHUNK_MAX (for O_DIRECT writes, gateway.storage.direct) when the server offers to
    (gateway.protocol's READ_INTO): no copy of the bytes in the process on the way."""
    return _client_into(request, aligned_buffer)


def client_bytearrays(request: Request) -> AsyncIterator[bytes | bytearray]:
    """As client_buffers, in bytearrays rather than aligned views: what a parser that
    searches its input (a multipart body's boundaries) takes as it is. A chunk handed on
    is never written to again, so views of it stay valid."""
    return _client_into(request, bytearray)


def _client_into(
    request: Request, allocate: Callable[[int], Whole]
) -> AsyncIterator[Whole | bytes]:
    extension = request.scope.get("extensions", {}).get(READ_INTO)
    if extension is None:
        return client_body(request)
    return _paced(request, _read_into(extension["readinto"], declared_size(request), allocate))


def _paced(request: Request, chunks: AsyncIterator[B]) -> AsyncIterator[B]:
    settings: Settings = request.app.state.settings
    window = settings.body_idle_timeout.total_seconds()
    return paced(chunks, window, max(1, int(settings.body_min_rate * window)))


async def _read_into(
    readinto: Callable[[memoryview], Awaitable[int]],
    size: int | None,
    allocate: Callable[[int], Whole],
) -> AsyncIterator[Whole | bytes]:
    """Each buffer filled to the brim goes on as it is (as `allocate` made it). A body
    starts, and goes on after a pause, in a small buffer, so that a client that sends
    little holds little; one filled part-way (the client paused) is copied out and filled
    again."""
    global _reading
    _reading += 1
    try:
        left, flowing = size, False
        whole: Whole | None = None
        buffer = memoryview(b"")  # a view of `whole`, the part a read fills
        while left is None or left > 0:
            if whole is None:
                chunk = CHUNK_MAX if flowing else CHUNK_START
                while chunk > CHUNK_MIN and 4 * chunk * _reading > CHUNK_BUDGET:
                    chunk //= 2
                whole = allocate(chunk if left is None else min(chunk, left))
                buffer = memoryview(whole)
            filled = await readinto(buffer)
            if not filled:
                if left:  # the parser saw no more (an Upgrade request's body)
                    raise BadRequest("The body ended before its Content-Length.")
                return
            if left is not None:
                left -= filled
            flowing = filled == len(buffer)
            if flowing:
                yield whole
                whole = None
            else:
                yield bytes(buffer[:filled])
                if len(buffer) > CHUNK_START:
                    whole = None  # a small one next
    finally:
        _reading -= 1


async def limited(chunks: AsyncIterable[Buffer], limit: int) -> AsyncIterator[Buffer]:
    """Pass `chunks` on, raising TooLarge as soon as they add up to more than `limit`."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise too_large(limit)
        yield chunk
        del chunk  # not held while the next one is awaited
