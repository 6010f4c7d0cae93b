"""A part in memory as the body of an S3 request, sent without being copied whole.

botocore takes bytes, bytearrays and file-like objects as bodies; aiohttp, under
aiobotocore, then copies them: a bytearray once whole when it slices it, once more when it
joins the request's head to it, and a file-like object 64 KiB at a time in a worker thread.
For a part of 8 MiB, that is two fresh 8 MiB copies per part in flight, or 128 trips to a
thread. `PartBody` is file-like for botocore (which reads it once, to sign it, when the
endpoint is plain HTTP) and has an aiohttp payload of its own that writes slices of the
part's memory straight to the connection.
"""

from typing import Any

SLICE = 1024 * 1024  # the most of a part handed to the connection at once


class PartBody:
    """Read-only, seekable view of a part's bytes."""

    __slots__ = ("data", "position")

    def __init__(self, data: memoryview):
        self.data = data
        self.position = 0

    def __len__(self) -> int:
        return len(self.data)

    def read(self, size: int | None = -1) -> bytes:
        end = len(self.data) if size is None or size < 0 else self.position + size
        chunk = bytes(self.data[self.position : end])
        self.position += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self.position, len(self.data))[whence]
        self.position = max(0, min(len(self.data), base + offset))
        return self.position

    def tell(self) -> int:
        return self.position

    def seekable(self) -> bool:
        return True


_registered = False


def register_part_payload() -> None:
    """Teach aiohttp (the s3 extra's HTTP client) to send a PartBody slice by slice."""
    global _registered
    if _registered:
        return
    from aiohttp import payload
    from aiohttp.abc import AbstractStreamWriter

    class PartPayload(payload.Payload):
        _value: PartBody

        def __init__(self, value: PartBody, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("content_type", "application/octet-stream")
            super().__init__(value, *args, **kwargs)
            self._size = len(value.data)

        def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
            return bytes(self._value.data).decode(encoding, errors)

        async def write(self, writer: AbstractStreamWriter) -> None:
            await self.write_with_length(writer, None)

        async def write_with_length(
            self, writer: AbstractStreamWriter, content_length: int | None
        ) -> None:
            data = self._value.data
            end = len(data) if content_length is None else min(len(data), content_length)
            for start in range(0, end, SLICE):
                await writer.write(data[start : min(end, start + SLICE)])

    payload.register_payload(PartPayload, PartBody)
    _registered = True
