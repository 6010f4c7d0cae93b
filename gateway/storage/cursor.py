"""Opaque listing cursors: the position after which the next page starts."""

import base64
import binascii

from ..errors import BadRequest


def encode_cursor(position: bytes) -> str:
    return base64.urlsafe_b64encode(position).decode().rstrip("=")


def decode_cursor(cursor: str) -> bytes:
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("The cursor is not one this gateway gave out.") from None
