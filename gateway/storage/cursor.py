"""Opaque listing cursors: the position after which the next page starts.

A cursor carries a checksum of its position, so that one the gateway did not give out is
refused before it reaches storage: S3-compatible servers differ on a continuation token
they never issued (AWS answers 400, moto 500). The checksum catches garbage, not forgery;
a forged position only lists from another place, within the caller's own prefix.
"""

import base64
import binascii
import hashlib

from ..errors import BadRequest

CHECK = 8  # bytes of SHA-256


def _check(position: bytes) -> bytes:
    return hashlib.sha256(position).digest()[:CHECK]


def encode_cursor(position: bytes) -> str:
    return base64.urlsafe_b64encode(_check(position) + position).decode().rstrip("=")


def decode_cursor(cursor: str) -> bytes:
    try:
        data = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        data = b""
    check, position = data[:CHECK], data[CHECK:]
    if not position or _check(position) != check:
        raise BadRequest("The cursor is not one this gateway gave out.")
    return position
