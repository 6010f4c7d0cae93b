"""Presigned URLs as pure functions: an HMAC-SHA256 over the method, the key and the expiry.

    /objects/{key}?expires=1767225600&signature=<64 hex digits>

`expires` is a Unix time in seconds. The signature covers everything that decides what the
URL may do, so changing any of it (or using the URL with another method or on another key)
breaks it. Every instance holding the same signing key accepts every URL; expiry is checked
against the clock of the instance that receives the request.
"""

import hashlib
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from .errors import Forbidden

METHODS = ("GET", "PUT")
MAX_EXPIRES_IN = 7 * 24 * 3600
# What a signed method lets a request do: a PUT URL also takes a browser form (POST).
REQUEST_METHODS = {"GET": "GET", "PUT": "PUT", "POST": "PUT"}
SIGNED_PARAMS = frozenset({"expires", "signature"})
# Changes only how the response names the file, never which object or what is done to it.
FREE_PARAMS = frozenset({"disposition"})

_VERSION = "gateway-presign-v1"
_EXPIRES = re.compile(r"^[0-9]{1,12}$")


def signature(secret: bytes, method: str, key: str, expires: int) -> str:
    # Keys hold no control characters, so newlines separate the fields unambiguously.
    message = "\n".join((_VERSION, method, key, str(expires))).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def query(secret: bytes, method: str, key: str, expires: int) -> dict[str, str]:
    return {"expires": str(expires), "signature": signature(secret, method, key, expires)}


def rfc3339(unix_time: int) -> str:
    return datetime.fromtimestamp(unix_time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_presigned(params: Mapping[str, str]) -> bool:
    return any(name in params for name in SIGNED_PARAMS)


def verify(
    secret: bytes,
    request_method: str,
    key: str,
    params: list[tuple[str, str]],
    now: float,
) -> None:
    """Raise Forbidden unless `params` (the query, in order) presign `request_method` on `key`
    and have not expired at `now`."""
    names = [name for name, _ in params]
    unique = set(names)
    if len(names) != len(unique) or unique - FREE_PARAMS != SIGNED_PARAMS:
        raise Forbidden("A presigned URL carries `expires` and `signature` once, and no more.")
    values = dict(params)
    expires, given = values["expires"], values["signature"]
    method = REQUEST_METHODS.get(request_method)
    if method is None or not _EXPIRES.match(expires):
        raise Forbidden("The presigned URL does not allow this request.")
    expected = signature(secret, method, key, int(expires))
    if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape")):
        raise Forbidden("The presigned URL does not allow this request.")
    if now >= int(expires):
        raise Forbidden("The presigned URL has expired.")
