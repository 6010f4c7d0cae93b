import pytest

from gateway.errors import RangeNotSatisfiable
from gateway.ranges import ByteRange, RangeSpec, parse_range, resolve_range


@pytest.mark.parametrize(
    ("header", "spec"),
    [
        ("bytes=0-99", RangeSpec(0, 99)),
        ("bytes=100-", RangeSpec(100, None)),
        ("bytes=-5", RangeSpec(None, 5)),
        ("Bytes = 3 - 4", RangeSpec(3, 4)),
    ],
)
def test_parses_single_ranges(header: str, spec: RangeSpec) -> None:
    assert parse_range(header) == spec


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "bytes=",
        "bytes=-",
        "bytes=5-1",
        "items=0-1",
        "bytes=a-b",
        "bytes=0-1,3-4",
        "bytes 0-1",
        "bytes=--1",
    ],
)
def test_malformed_or_multiple_ranges_mean_the_whole_object(header: str | None) -> None:
    assert parse_range(header) is None


@pytest.mark.parametrize(
    ("spec", "size", "expected"),
    [
        (RangeSpec(0, 99), 1000, ByteRange(0, 99, 1000)),
        (RangeSpec(900, 5000), 1000, ByteRange(900, 999, 1000)),
        (RangeSpec(10, None), 1000, ByteRange(10, 999, 1000)),
        (RangeSpec(None, 10), 1000, ByteRange(990, 999, 1000)),
        (RangeSpec(None, 5000), 1000, ByteRange(0, 999, 1000)),
        (RangeSpec(999, 999), 1000, ByteRange(999, 999, 1000)),
    ],
)
def test_resolves_against_the_size(spec: RangeSpec, size: int, expected: ByteRange) -> None:
    resolved = resolve_range(spec, size)
    assert resolved == expected
    assert resolved.content_range == f"bytes {expected.start}-{expected.end}/{size}"
    assert resolved.length == expected.end - expected.start + 1


@pytest.mark.parametrize(
    ("spec", "size"),
    [
        (RangeSpec(1000, None), 1000),
        (RangeSpec(1000, 2000), 1000),
        (RangeSpec(None, 0), 1000),
        (RangeSpec(0, None), 0),
        (RangeSpec(None, 1), 0),
    ],
)
def test_unsatisfiable(spec: RangeSpec, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        resolve_range(spec, size)
    assert caught.value.headers["Content-Range"] == f"bytes */{size}"
