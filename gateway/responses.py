"""Responses that carry objects: their headers, and their bytes streamed from a backend."""

from collections.abc import AsyncIterator, Mapping

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from .conditions import Outcome, http_date
from .disposition import content_disposition
from .errors import PreconditionFailed
from .protocol import ZERO_COPY
from .ranges import ByteRange
from .storage.base import ObjectInfo, ObjectReader


def validator_headers(info: ObjectInfo) -> dict[str, str]:
    return {"ETag": info.etag, "Last-Modified": http_date(info.last_modified)}


def object_headers(
    info: ObjectInfo, byte_range: ByteRange | None, *, inline: bool = False
) -> dict[str, str]:
    headers = validator_headers(info)
    headers.update(
        {
            "Content-Type": info.content_type,
            "Content-Length": str(byte_range.length if byte_range else info.size),
            "Accept-Ranges": "bytes",
            "Content-Disposition": content_disposition(
                info.filename or info.key.rsplit("/", 1)[-1], inline=inline
            ),
            "X-Checksum-SHA256": info.sha256,
        }
    )
    if byte_range is not None:
        headers["Content-Range"] = byte_range.content_range
    headers.update(metadata_headers(info.metadata))
    return headers


def not_modified(info: ObjectInfo) -> Response:
    return Response(status_code=304, headers=validator_headers(info))


def refusal(outcome: Outcome, info: ObjectInfo) -> Response:
    """The answer to a failed precondition: 304, or 412 raised as a problem."""
    if outcome is Outcome.NOT_MODIFIED:
        return not_modified(info)
    raise PreconditionFailed()


def head_response(info: ObjectInfo, byte_range: ByteRange | None, *, inline: bool) -> Response:
    return Response(
        status_code=206 if byte_range else 200,
        headers=object_headers(info, byte_range, inline=inline),
    )


def stream_response(reader: ObjectReader, *, inline: bool) -> Response:
    """Stream an open object; the reader is closed when the body ends or the client leaves."""
    return ObjectResponse(
        reader,
        status_code=206 if reader.range else 200,
        headers=object_headers(reader.info, reader.range, inline=inline),
    )


class ObjectResponse(StreamingResponse):
    """An object's bytes: handed to the server as a file to send (the ASGI zero-copy send
    extension) when both the backend and the server can, else streamed in chunks."""

    def __init__(self, reader: ObjectReader, *, status_code: int, headers: dict[str, str]):
        super().__init__(_closing(reader), status_code=status_code, headers=headers)
        self.reader = reader

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        file = self.reader.file()
        if file is None or ZERO_COPY not in scope.get("extensions", {}):
            await super().__call__(scope, receive, send)
            return
        fd, offset, count = file
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            sending = {
                "type": ZERO_COPY,
                "file": fd,
                "offset": offset,
                "count": count,
                "more_body": True,
            }
            await send(sending)
            # The body ends with a message of its own, which middleware that watches for
            # the end of a response expects. `sent`: what the server got out (our server
            # says; any other is taken to have sent it all).
            if sending.get("sent", count) == count:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.reader.aclose()


async def _closing(reader: ObjectReader) -> AsyncIterator[bytes]:
    try:
        async for chunk in reader.chunks():
            yield chunk
    finally:
        await reader.aclose()


def metadata_headers(metadata: Mapping[str, str]) -> dict[str, str]:
    """User metadata as `X-Meta-*` headers, their UTF-8 bytes sent as they are."""
    return {f"X-Meta-{_wire(name)}": _wire(value) for name, value in metadata.items()}


def _wire(text: str) -> str:
    # Starlette encodes header values as latin-1; this sends the UTF-8 bytes instead.
    return text.encode("utf-8").decode("latin-1")
