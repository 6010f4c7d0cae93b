"""The client's side of tus 1.0.0 over httpx: creation, HEAD, and PATCH with a checksum.

upload = create(conn, length, {"filename": "a.bin"})   # POST: a new upload URL
upload = status(conn, upload.url)                        # HEAD: how far it got
upload = patch(conn, upload, chunk, sent)                # PATCH: the next bytes
"""

import base64
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

from .common import Connection, refusal

VERSION = "1.0.0"
HEADERS = {"Tus-Resumable": VERSION}
PIECE = 64 * 1024  # the progress bar and the rate limit move this many bytes at a time


class Gone(Exception):
    """The upload is no more (expired, terminated): a new one must start from zero."""


class Busy(Exception):
    """Another request holds the upload, or the offset moved: ask again where it stands."""


class Damaged(Exception):
    """The chunk arrived damaged (460) and was thrown away: send it again."""


@dataclass(frozen=True)
class Upload:
    url: str
    length: int
    offset: int
    key: str | None = None  # X-Object-Key: where the object is, once the last byte is in
    sha256: str | None = None  # X-Checksum-SHA256, if the last PATCH's answer gives it

    @property
    def complete(self) -> bool:
        return self.offset >= self.length


def encode_metadata(metadata: Mapping[str, str]) -> str:
    return ",".join(
        f"{name} {base64.b64encode(value.encode()).decode()}"
        for name, value in metadata.items()
        if value
    )


def create(conn: Connection, length: int, metadata: Mapping[str, str]) -> Upload:
    headers = {**HEADERS, "Upload-Length": str(length)}
    if encoded := encode_metadata(metadata):
        headers["Upload-Metadata"] = encoded
    response = conn.http.post(conn.url("uploads/"), headers=headers)
    if response.status_code != 201 or "location" not in response.headers:
        raise refusal(response, "creating the upload")
    url = str(response.url.join(response.headers["location"]))
    return Upload(url, length, 0, response.headers.get("x-object-key"))


def status(conn: Connection, url: str) -> Upload:
    response = conn.http.head(url, headers=HEADERS)
    if response.status_code in (403, 404, 410):
        raise Gone()
    if response.status_code not in (200, 204):
        raise refusal(response, "asking how far the upload got")
    try:
        length = int(response.headers["upload-length"])
        offset = int(response.headers["upload-offset"])
    except (KeyError, ValueError):
        raise refusal(response, "asking how far the upload got (no Upload-Offset)") from None
    return Upload(url, length, offset, response.headers.get("x-object-key"))


def patch(conn: Connection, upload: Upload, chunk: bytes, sent: Callable[[int], None]) -> Upload:
    """Send `chunk` at the upload's offset; the upload as the gateway then has it."""
    digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
    headers = {
        **HEADERS,
        "Content-Type": "application/offset+octet-stream",
        "Content-Length": str(len(chunk)),  # known, so httpx does not send it chunked
        "Upload-Offset": str(upload.offset),
        "Upload-Checksum": f"sha256 {digest}",
    }
    response = conn.http.patch(upload.url, content=_pieces(chunk, sent), headers=headers)
    if response.status_code == 204:
        return replace(
            upload,
            offset=int(response.headers["upload-offset"]),
            key=response.headers.get("x-object-key") or upload.key,
            sha256=response.headers.get("x-checksum-sha256"),
        )
    if response.status_code in (404, 410):
        raise Gone()
    if response.status_code in (409, 423):
        raise Busy()
    if response.status_code == 460:
        raise Damaged()
    raise refusal(response, "sending bytes")


def _pieces(chunk: bytes, sent: Callable[[int], None]) -> Iterator[bytes]:
    view = memoryview(chunk)
    for start in range(0, len(view), PIECE):
        piece = view[start : start + PIECE]
        yield bytes(piece)
        sent(len(piece))
