"""A few lines of the tus 1.0.0 protocol, by hand, for the robustness suites."""

import base64

import httpx

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = "application/offset+octet-stream"


def create(url: str, length: int, key: str) -> str:
    """A new upload of `length` bytes for `key`; its URL."""
    metadata = "key " + base64.b64encode(key.encode()).decode()
    response = httpx.post(
        f"{url}/uploads/",
        headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return response.headers["location"]


def patch(upload: str, offset: int, data: bytes, timeout: float = 60) -> httpx.Response:
    headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": CHUNK}
    return httpx.patch(upload, content=data, headers=headers, timeout=timeout)


def offset(upload: str) -> int:
    response = httpx.head(upload, headers=TUS, timeout=30)
    assert response.status_code == 200, response.headers
    return int(response.headers["upload-offset"])


def resume(upload: str, data: bytes) -> httpx.Response:
    """Send the rest of `data` from the upload's durable offset, as a tus client would."""
    at = offset(upload)
    assert at <= len(data)
    return patch(upload, at, data[at:])
