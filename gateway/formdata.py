"""multipart/form-data read incrementally from a request body, one stream per part.

Starlette's `request.form()` parses the whole body first and spools every file to a
temporary file. Here python-multipart's push parser is fed as the body arrives, and each
part's bytes are handed on as they come, so a file part can be piped into storage while the
client is still sending it:

    form = FormReader(client_bytearrays(request), request.headers["content-type"])
    async for part in form:
        if part.filename is None:
            value = await part.text()
        else:
            await storage.put(key, part.chunks(), spec)

A part's bytes must be read (or left, and then skipped) before the next part is returned.
python-multipart bounds each part's headers (4 KiB, 8 fields); this reader bounds the
number of parts and the length of text fields.
"""

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import BadRequest

MAX_PARTS = 1000
MAX_TEXT_BYTES = 64 * 1024

Event = (
    tuple[Literal["headers"], dict[str, str]]
    | tuple[Literal["data"], bytes | memoryview]
    | tuple[Literal["end"], None]
)


def boundary_of(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise BadRequest("The body must be multipart/form-data.")
    boundary = options.get(b"boundary", b"")
    if not 0 < len(boundary) <= 200:
        raise BadRequest("The multipart/form-data body has no valid boundary.")
    return boundary


@dataclass
class FormPart:
    reader: "FormReader"
    name: str
    filename: str | None
    content_type: str | None
    headers: dict[str, str] = field(repr=False)
    consumed: bool = False

    async def chunks(self) -> AsyncIterator[bytes | memoryview]:
        if self.consumed:
            return
        while True:
            event = await self.reader._next_event()
            if event is None or event[0] == "headers":  # the parser ends every part first
                raise BadRequest("The multipart body is malformed.")
            if event[0] == "end":
                self.consumed = True
                return
            yield event[1]

    async def text(self, limit: int = MAX_TEXT_BYTES) -> str:
        data = bytearray()
        async for chunk in self.chunks():
            data += chunk
            if len(data) > limit:
                raise BadRequest(f"The form field {self.name!r} is too long.")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"The form field {self.name!r} is not UTF-8.") from None


class FormReader:
    def __init__(self, body: AsyncIterable[bytes | bytearray], content_type: str | None):
        self._body = aiter(body)
        self._events: deque[Event] = deque()
        self._finished = False
        self._parts = 0
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, str] = {}
        self._parser = MultipartParser(
            boundary_of(content_type),
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )

    # --- parser callbacks: they only record events ----------------------------------

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise BadRequest(f"A form may have at most {MAX_PARTS} parts.")
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field, self._value = bytearray(), bytearray()

    def _on_headers_finished(self) -> None:
        self._events.append(("headers", self._headers))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        # `data` is a chunk of the body that nothing writes to again (bytes, or a bytearray
        # of gateway.intake.client_bytearrays), or a piece of the boundary: a view of it
        # stays valid and saves a copy of every byte.
        self._events.append(("data", memoryview(data)[start:end]))

    def _on_part_end(self) -> None:
        self._events.append(("end", None))

    def _on_end(self) -> None:
        self._finished = True

    # --- pulling -----------------------------------------------------------------------

    async def _next_event(self) -> Event | None:
        """The next parser event, reading more of the body as needed; None after the end."""
        while not self._events:
            if self._finished:
                return None
            try:
                chunk = await anext(self._body)
            except StopAsyncIteration:
                raise BadRequest("The multipart body ended before its closing boundary.") from None
            try:
                self._parser.write(chunk)  # type: ignore[arg-type]  # bytearrays: read alike
            except MultipartParseError:
                raise BadRequest("The multipart body is malformed.") from None
        return self._events.popleft()

    async def __aiter__(self) -> AsyncIterator[FormPart]:
        part: FormPart | None = None
        while True:
            if part is not None:
                async for _ in part.chunks():  # skip what the caller left unread
                    pass
            event = await self._next_event()
            if event is None:
                await self._drain()
                return
            kind, headers = event
            if kind != "headers" or not isinstance(headers, dict):
                raise BadRequest("The multipart body is malformed.")
            part = _make_part(self, headers)
            yield part

    async def _drain(self) -> None:
        """Read whatever follows the closing boundary (an epilogue), so the body is consumed."""
        async for _ in self._body:
            pass


def _make_part(reader: FormReader, headers: dict[str, str]) -> FormPart:
    kind, options = parse_options_header(headers.get("content-disposition", ""))
    if kind != b"form-data" or b"name" not in options:
        raise BadRequest("A part lacks a Content-Disposition with a name.")
    name = options[b"name"].decode("utf-8", "replace")
    raw_filename = options.get(b"filename")
    filename = raw_filename.decode("utf-8", "surrogateescape") if raw_filename is not None else None
    return FormPart(reader, name, filename, headers.get("content-type"), headers)
