"""The tus 1.0.0 header codec: pure functions from header values to values and back.

The routes (gateway/routes/uploads.py) speak HTTP; the storage backends keep the bytes and
the state; this module only reads and writes the protocol's headers.
"""

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import datetime

from .conditions import http_date
from .errors import BadRequest, PreconditionFailed
from .keys import key_for_filename, sanitize_filename, validate_key

VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
)
CHECKSUM_ALGORITHMS = ("sha1", "md5", "sha256")
PATCH_CONTENT_TYPE = "application/offset+octet-stream"
MAX_METADATA_BYTES = 4096

_NUMBER = re.compile(r"^[0-9]{1,19}$")
_METADATA_KEY = re.compile(r"^[!-+\--~]+$")  # visible ASCII but the comma


def check_version(headers: Mapping[str, str]) -> None:
    """Every request but OPTIONS must speak this version (412 with Tus-Version if not)."""
    if headers.get("tus-resumable") != VERSION:
        raise PreconditionFailed(
            f"This server speaks tus {VERSION}: send `Tus-Resumable: {VERSION}`.",
            headers={"Tus-Version": VERSION},
        )


def parse_number(value: str | None, name: str) -> int | None:
    """A non-negative integer header such as Upload-Offset or Upload-Length."""
    if value is None:
        return None
    value = value.strip()
    if not _NUMBER.match(value):
        raise BadRequest(f"{name} must be a non-negative integer.")
    return int(value)


def parse_metadata(header: str | None) -> dict[str, str]:
    """Upload-Metadata: comma-separated `key base64(value)` pairs, the value optional."""
    if not header or not header.strip():
        return {}
    if len(header) > MAX_METADATA_BYTES:
        raise BadRequest(f"Upload-Metadata may be {MAX_METADATA_BYTES} bytes at most.")
    metadata: dict[str, str] = {}
    for pair in header.split(","):
        key, _, encoded = pair.strip().partition(" ")
        encoded = encoded.strip()
        if not _METADATA_KEY.match(key) or " " in encoded or key in metadata:
            raise BadRequest("Upload-Metadata must be comma-separated `key base64` pairs.")
        try:
            metadata[key] = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise BadRequest(f"Upload-Metadata's {key!r} is not base64 of UTF-8.") from None
    return metadata


def encode_metadata(metadata: Mapping[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode()}".rstrip()
        for key, value in metadata.items()
    )


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """Upload-Checksum: `algorithm base64(digest)`; an algorithm not offered is 400."""
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise BadRequest(
            f"Upload-Checksum algorithms are {', '.join(CHECKSUM_ALGORITHMS)}.",
            headers={"Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS)},
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if not digest:
        raise BadRequest("Upload-Checksum is `algorithm base64(digest)`.")
    return algorithm, digest


def object_key(metadata: Mapping[str, str], upload_id: str) -> str:
    """The key an upload is stored at: `key`, else `prefix` + the sanitized `filename`,
    else `prefix` + the upload's id."""
    if "key" in metadata:
        return validate_key(metadata["key"])
    prefix = metadata.get("prefix", "")
    if metadata.get("filename"):
        return key_for_filename(metadata["filename"], prefix)
    return validate_key(prefix + upload_id)


def filename(metadata: Mapping[str, str]) -> str | None:
    return sanitize_filename(metadata["filename"]) or None if metadata.get("filename") else None


def content_type(metadata: Mapping[str, str]) -> str | None:
    return metadata.get("content_type") or metadata.get("filetype") or None


def expires(moment: datetime) -> str:
    """Upload-Expires, in the HTTP date format the expiration extension asks for."""
    return http_date(moment)


def options_headers(max_size: int) -> dict[str, str]:
    return {
        "Tus-Resumable": VERSION,
        "Tus-Version": VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }
