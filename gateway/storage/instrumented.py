"""Backend metrics for every backend: a proxy that times each storage call and counts the
ones that failed on the backend's side.

`open_storage` wraps whatever backend it opens, so a new backend gets its metrics without a
line of its own. A call that failed because of the client (it went away, sent too much, sent
a bad checksum) is not a backend error; a 5xx error of ours, or any exception the backend
did not translate, is.
"""

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from starlette.requests import ClientDisconnect

from .. import metrics
from ..errors import GatewayError
from ..ranges import RangeSpec
from .base import (
    Chunks,
    Listing,
    ObjectInfo,
    ObjectReader,
    Staged,
    Storage,
    Uploads,
    UploadSpec,
    UploadState,
    WriteSpec,
)

if TYPE_CHECKING:
    from ..settings import Settings

_DURATION = {op: metrics.BACKEND_DURATION.labels(op) for op in metrics.BACKEND_OPERATIONS}
_ERRORS = {op: metrics.BACKEND_ERRORS.labels(op) for op in metrics.BACKEND_OPERATIONS}


def backend_failed(exc: BaseException) -> bool:
    if isinstance(exc, GatewayError):
        return exc.status >= 500
    return isinstance(exc, Exception) and not isinstance(exc, ClientDisconnect)


@contextlib.contextmanager
def timed(operation: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    except BaseException as exc:
        if backend_failed(exc):
            _ERRORS[operation].inc()
        raise
    finally:
        _DURATION[operation].observe(time.perf_counter() - started)


class InstrumentedStorage(Storage):
    def __init__(self, backend: Storage) -> None:
        self.backend = backend
        self.name = backend.name
        self.uploads = InstrumentedUploads(backend.uploads) if backend.uploads else None

    def __getattr__(self, name: str) -> Any:
        # What a backend has beyond the interface (a local sweep, say) stays reachable.
        if name == "backend":
            raise AttributeError(name)
        return getattr(self.backend, name)

    @classmethod
    def from_settings(cls, settings: "Settings") -> "Storage":
        raise TypeError("wrap an open backend: InstrumentedStorage(backend)")

    async def start(self) -> None:
        await self.backend.start()

    async def close(self) -> None:
        await self.backend.close()

    async def put(self, key: str, chunks: Chunks, spec: WriteSpec) -> ObjectInfo:
        with timed("put"):
            return await self.backend.put(key, chunks, spec)

    async def stage(self, key: str, chunks: Chunks, spec: WriteSpec) -> Staged:
        with timed("stage"):
            return InstrumentedStaged(await self.backend.stage(key, chunks, spec))

    async def open(self, key: str, spec: RangeSpec | None = None) -> ObjectReader:
        with timed("open"):
            return await self.backend.open(key, spec)

    async def stat(self, key: str) -> ObjectInfo:
        with timed("stat"):
            return await self.backend.stat(key)

    async def delete(self, key: str) -> None:
        with timed("delete"):
            await self.backend.delete(key)

    async def list(
        self,
        prefix: str = "",
        delimiter: str | None = None,
        cursor: str | None = None,
        limit: int = 1000,
    ) -> Listing:
        with timed("list"):
            return await self.backend.list(prefix, delimiter, cursor, limit)

    async def check(self) -> None:
        with timed("check"):
            await self.backend.check()


class InstrumentedStaged(Staged):
    def __init__(self, staged: Staged) -> None:
        self.staged = staged
        self.info = staged.info

    async def commit(self) -> ObjectInfo:
        with timed("commit"):
            return await self.staged.commit()

    async def discard(self) -> None:
        await self.staged.discard()


class InstrumentedUploads(Uploads):
    def __init__(self, uploads: Uploads) -> None:
        self.uploads = uploads

    async def create(self, spec: UploadSpec) -> UploadState:
        with timed("upload_create"):
            return await self.uploads.create(spec)

    async def info(self, upload_id: str) -> UploadState:
        with timed("upload_info"):
            return await self.uploads.info(upload_id)

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
        with timed("upload_append"):
            return await self.uploads.append(
                upload_id, offset, chunks, checksum=checksum, length=length, admit=admit
            )

    async def terminate(self, upload_id: str) -> None:
        with timed("upload_terminate"):
            await self.uploads.terminate(upload_id)

    async def sweep(self) -> int:
        with timed("upload_sweep"):
            return await self.uploads.sweep()
