"""Object keys and filenames: what is a valid key, and how a client's filename becomes one."""

import re
from urllib.parse import unquote_to_bytes

from starlette.convertors import Convertor, register_url_convertor

from .errors import BadRequest, InvalidKey

MAX_KEY_BYTES = 1024
# Backends keep their bookkeeping (resumable upload state) under this prefix: it is hidden
# from listings and cannot be written or read through the objects API.
RESERVED_PREFIX = ".gateway/"

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a valid object key, else raise InvalidKey."""
    size = len(key.encode("utf-8", "surrogatepass"))
    if not 0 < size <= MAX_KEY_BYTES:
        raise InvalidKey(f"A key is 1 to {MAX_KEY_BYTES} bytes of UTF-8.")
    if _CONTROL.search(key):
        raise InvalidKey("A key may not hold control characters.")
    if "\\" in key:
        raise InvalidKey("A key may not hold a backslash.")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in key):
        raise InvalidKey("A key must be valid UTF-8.")
    if key.startswith("/") or key.endswith("/"):
        raise InvalidKey("A key may not start or end with '/'.")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey("A key may not have empty, '.' or '..' segments.")
    if key.startswith(RESERVED_PREFIX):
        raise InvalidKey(f"Keys under {RESERVED_PREFIX!r} are reserved.")
    return key


def decode_path_key(raw: bytes) -> str:
    """The key in a raw (still percent-encoded) URL path segment, strictly decoded."""
    if _BAD_PERCENT.search(raw):
        raise InvalidKey("The key's percent-encoding is invalid.")
    try:
        key = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidKey("A key must be valid UTF-8.") from None
    return validate_key(key)


def sanitize_filename(filename: str) -> str:
    """The last path component of a client's filename, `/` and `\\` both separators."""
    return re.split(r"[/\\]", filename)[-1]


def key_for_filename(filename: str | None, prefix: str = "") -> str:
    """The key of an uploaded file: `prefix` + its sanitized filename."""
    name = sanitize_filename(filename or "")
    if not name:
        raise BadRequest("The file part has no usable filename.")
    return validate_key(prefix + name)


class KeyConvertor(Convertor[str]):
    """`{key:key}` in a route: any non-empty path, newlines included (Starlette's `path`
    stops at them), so that such keys reach validation and get 400, not 404."""

    regex = "(?s:.+)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("key", KeyConvertor())
