"""The incremental multipart/form-data reader, fed the way a socket feeds it."""

import os
from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import BadRequest
from gateway.formdata import MAX_PARTS, FormReader

BOUNDARY = "----gwboundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def encode(parts: Sequence[tuple[str, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


Kind = type[bytes] | type[bytearray]  # bytearrays: as a real server reads bodies


async def feed(
    body: bytes, cuts: list[int], kind: Kind = bytes
) -> AsyncIterator[bytes | bytearray]:
    start = 0
    for cut in sorted(set(cuts)):
        if start < cut < len(body):
            yield kind(body[start:cut])
            start = cut
    yield kind(body[start:])


async def read_all(
    body: bytes,
    cuts: list[int] | None = None,
    content_type: str = CONTENT_TYPE,
    kind: Kind = bytes,
) -> list[tuple[str, str | None, bytes]]:
    found = []
    async for part in FormReader(feed(body, cuts or [], kind), content_type):
        data = b"".join([bytes(chunk) async for chunk in part.chunks()])
        found.append((part.name, part.filename, data))
    return found


PARTS = [
    ("prefix", None, b"up/"),
    ("file", "a.bin", os.urandom(3000)),
    ("file", "b.bin", b"--" + BOUNDARY.encode()[:-1] + b"\r\n--"),
    ("file", "empty", b""),
]


async def test_reads_every_part() -> None:
    assert await read_all(encode(PARTS)) == PARTS


@pytest.mark.parametrize("kind", [bytes, bytearray])
async def test_boundary_split_at_every_position(kind: Kind) -> None:
    body = encode(PARTS)
    for cut in range(1, len(body)):
        assert await read_all(body, [cut], kind=kind) == PARTS, cut


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=4000), max_size=30),
    st.binary(max_size=2000),
    st.sampled_from([bytes, bytearray]),
)
async def test_any_chunking_gives_the_same_parts(cuts: list[int], data: bytes, kind: Kind) -> None:
    parts = [("key", None, b"k"), ("file", "x", data)]
    assert await read_all(encode(parts), cuts, kind=kind) == parts


async def test_unread_parts_are_skipped() -> None:
    names = []
    async for part in FormReader(feed(encode(PARTS), [100, 2000]), CONTENT_TYPE):
        names.append(part.name)
    assert names == ["prefix", "file", "file", "file"]


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=" + "x" * 300,
    ],
)
async def test_needs_a_multipart_content_type_with_a_boundary(content_type: str | None) -> None:
    with pytest.raises(BadRequest):
        await read_all(encode(PARTS), content_type=content_type)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"no boundary at all",
        encode(PARTS)[:-30],  # cut short
        encode(PARTS).replace(b"Content-Disposition: form-data; ", b"X: y; "),
        f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
    ],
)
async def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(BadRequest):
        await read_all(body)


async def test_huge_part_headers_are_refused() -> None:
    body = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"\r\n'
        f"X-Padding: {'a' * 20000}\r\n\r\nx\r\n--{BOUNDARY}--\r\n"
    ).encode()
    with pytest.raises(BadRequest):
        await read_all(body)


async def test_too_many_parts_are_refused() -> None:
    body = encode([("f", None, b"")] * (MAX_PARTS + 1))
    with pytest.raises(BadRequest, match="parts"):
        await read_all(body)


async def test_nested_multipart_is_just_bytes() -> None:
    inner = encode([("inner", "i.txt", b"hello")], boundary="inner-boundary")
    parts = [("file", "outer.bin", inner)]
    assert await read_all(encode(parts)) == parts


async def test_text_fields_are_bounded() -> None:
    async for part in FormReader(feed(encode([("prefix", None, b"x" * 70000)]), []), CONTENT_TYPE):
        with pytest.raises(BadRequest, match="too long"):
            await part.text()
