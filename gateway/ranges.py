"""Range requests (RFC 9110 section 14) as pure functions.

`parse_range` reads the header into a spec without knowing the object; `resolve_range`
applies a spec to an object's size. A malformed header, another unit, or several ranges
give no spec at all, and the whole object is served (200), as RFC 9110 allows.
"""

import re
from dataclasses import dataclass

from .errors import RangeNotSatisfiable

_SINGLE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RangeSpec:
    """`bytes=first-last`, `bytes=first-` (last None) or `bytes=-suffix` (first None)."""

    first: int | None
    last: int | None


@dataclass(frozen=True)
class ByteRange:
    """A satisfiable range of an object: `start` to `end`, both inclusive."""

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.size}"


def parse_range(header: str | None) -> RangeSpec | None:
    if not header:
        return None
    match = _SINGLE.match(header)
    if match is None:
        return None
    first, last = match[1], match[2]
    if not first and not last:
        return None
    if first and last and int(first) > int(last):
        return None
    return RangeSpec(int(first) if first else None, int(last) if last else None)


def resolve_range(spec: RangeSpec, size: int) -> ByteRange:
    """The bytes `spec` selects of an object of `size` bytes; RangeNotSatisfiable if none."""
    if spec.first is None:
        suffix = spec.last or 0
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(0, size - suffix), size - 1, size)
    if spec.first >= size:
        raise RangeNotSatisfiable(size)
    end = size - 1 if spec.last is None else min(spec.last, size - 1)
    return ByteRange(spec.first, end, size)
