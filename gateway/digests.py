"""Checksums computed while an upload streams, and the batching that lets them run off the loop.

hashlib releases the GIL for buffers over 2 KiB, so a worker thread hashes one batch while
the event loop receives the next. MD5 costs about 2.5x SHA-256 here, so it runs only when a
client sent Content-MD5; the ETag comes from the SHA-256.
"""

import hashlib
import hmac
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from .errors import ChecksumMismatch
from .storage.base import Buffer, WriteSpec


class Hasher(Protocol):
    """What the writer threads feed each batch to."""

    def update(self, chunks: Sequence[Buffer]) -> None: ...


class Digests:
    def __init__(self, spec: WriteSpec):
        self.spec = spec
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if spec.expect_md5 is not None else None

    def update(self, chunks: Sequence[Buffer]) -> None:
        """Feed a batch; thread-safe only in the sense that one batch is fed at a time."""
        for chunk in chunks:
            self._sha256.update(chunk)
            if self._md5 is not None:
                self._md5.update(chunk)
            self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def verify(self) -> None:
        """Raise ChecksumMismatch if the bytes fed differ from what the client announced."""
        md5, expected = self._md5, self.spec.expect_md5
        if (
            md5 is not None
            and expected is not None
            and not hmac.compare_digest(md5.digest(), expected)
        ):
            raise ChecksumMismatch("The body does not match its Content-MD5.")
        if self.spec.expect_sha256 is not None and not hmac.compare_digest(
            self.sha256, self.spec.expect_sha256
        ):
            raise ChecksumMismatch("The body does not match its X-Checksum-SHA256.")


async def batched(
    chunks: AsyncIterable[Buffer],
    size: Callable[[], int],
    *,
    keep_on: tuple[type[BaseException], ...] = (),
) -> AsyncIterator[list[Buffer]]:
    """Group chunks into lists of at least `size()` bytes (the last may be shorter); `size`
    is asked once a batch. When `chunks` breaks off with one of the `keep_on` errors (a
    client gone or stalled), the chunks gathered so far are yielded before the error is
    raised: bytes that arrived are not lost (a resumable upload keeps them)."""
    batch: list[Buffer] = []
    held, limit = 0, size()
    try:
        async for chunk in chunks:
            batch.append(chunk)
            held += len(chunk)
            del chunk  # not held while the next one is awaited
            if held >= limit:
                yield batch
                batch, held, limit = [], 0, size()
    except keep_on:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


class HashChains:
    """The SHA-256 of resumable uploads, carried from one request to the next in this
    process: a cache only. A request that starts at the offset a chain ended at continues
    it; any other start (another instance took the last request, a restart, a request
    that broke off) finds none, and the finished upload is hashed by reading it back."""

    def __init__(self, size: int = 1024):
        self.size = size
        self._chains: OrderedDict[str, tuple[int, Any]] = OrderedDict()

    def take(self, upload_id: str, offset: int) -> Any:
        """The chain that ended at `offset` (a fresh one at 0), or None; it leaves the cache
        until `keep` puts it back."""
        chain = self._chains.pop(upload_id, None)
        if chain is not None and chain[0] == offset:
            return chain[1]
        return hashlib.sha256() if offset == 0 else None

    def keep(self, upload_id: str, offset: int, chain: Any) -> None:
        if chain is None:
            return
        self._chains[upload_id] = (offset, chain)
        while len(self._chains) > self.size:
            self._chains.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        self._chains.pop(upload_id, None)
