"""Presigned URLs: the pure signing functions, then POST /presign and the URLs it gives out."""

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from gateway import presign
from gateway.app import create_app
from gateway.errors import Forbidden
from gateway.settings import Settings
from tests.conftest import SIGNING_KEY, bearer

SECRET = SIGNING_KEY.encode()
NOW = 1_800_000_000


def params(method: str, key: str, expires: int) -> list[tuple[str, str]]:
    return list(presign.query(SECRET, method, key, expires).items())


# --- pure -------------------------------------------------------------------------------


def test_a_signature_is_verified() -> None:
    presign.verify(SECRET, "GET", "a/b.txt", params("GET", "a/b.txt", NOW + 60), NOW)
    presign.verify(SECRET, "PUT", "a/b.txt", params("PUT", "a/b.txt", NOW + 60), NOW + 59.9)
    presign.verify(SECRET, "POST", "a/b.txt", params("PUT", "a/b.txt", NOW + 60), NOW)


@pytest.mark.parametrize(
    ("method", "key", "query", "now"),
    [
        ("GET", "a/b.txt", params("GET", "a/b.txt", NOW), NOW),  # expired
        ("GET", "a/b.txt", params("GET", "a/b.txt", NOW + 60), NOW + 61),
        ("PUT", "a/b.txt", params("GET", "a/b.txt", NOW + 60), NOW),  # another method
        ("HEAD", "a/b.txt", params("GET", "a/b.txt", NOW + 60), NOW),
        ("DELETE", "a/b.txt", params("PUT", "a/b.txt", NOW + 60), NOW),
        ("POST", "a/b.txt", params("GET", "a/b.txt", NOW + 60), NOW),
        ("GET", "a/c.txt", params("GET", "a/b.txt", NOW + 60), NOW),  # another key
        (
            "GET",
            "a/b.txt",
            [("expires", str(NOW + 61)), params("GET", "a/b.txt", NOW + 60)[1]],
            NOW,
        ),
        ("GET", "a/b.txt", [params("GET", "a/b.txt", NOW + 60)[0], ("signature", "0" * 64)], NOW),
        ("GET", "a/b.txt", params("GET", "a/b.txt", NOW + 60)[:1], NOW),  # no signature
        ("GET", "a/b.txt", params("GET", "a/b.txt", NOW + 60)[1:], NOW),  # no expiry
        ("GET", "a/b.txt", [*params("GET", "a/b.txt", NOW + 60), ("x", "1")], NOW),
        ("GET", "a/b.txt", [*params("GET", "a/b.txt", NOW + 60), ("expires", "9")], NOW),
        ("GET", "a/b.txt", [("expires", "-1"), ("signature", "é")], NOW),
    ],
)
def test_anything_else_is_forbidden(
    method: str, key: str, query: list[tuple[str, str]], now: float
) -> None:
    with pytest.raises(Forbidden):
        presign.verify(SECRET, method, key, query, now)


def test_another_secret_signs_differently() -> None:
    ours = presign.signature(SECRET, "GET", "k", NOW)
    assert ours != presign.signature(b"another secret of the right length!", "GET", "k", NOW)
    assert ours != presign.signature(SECRET, "GET", "k", NOW + 1)
    assert ours == presign.signature(SECRET, "GET", "k", NOW)


# --- over HTTP --------------------------------------------------------------------------


async def presigned(
    client: httpx.AsyncClient, key: str, method: str, expires_in: int = 300, token: str = "admin"
) -> dict[str, Any]:
    response = await client.post(
        "/presign",
        json={"key": key, "method": method, "expires_in": expires_in},
        headers=bearer(token),
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | changes
    return parts._replace(query=urlencode(query)).geturl()


async def test_a_presigned_get_works_without_a_token(secured: httpx.AsyncClient) -> None:
    key = "tenant-a/report 2026 (é).pdf"
    put = await secured.put(f"/objects/{key}", content=b"the report", headers=bearer("admin"))
    assert put.status_code == 201
    answer = await presigned(secured, key, "GET", expires_in=600)
    url, expires_at = answer["url"], answer["expires_at"]
    assert answer["method"] == "GET"
    assert url.startswith("http://gateway.test/objects/tenant-a/report%202026%20%28%C3%A9%29.pdf?")
    expires = int(dict(parse_qsl(urlsplit(url).query))["expires"])
    assert abs(expires - (time.time() + 600)) < 5
    assert expires_at.endswith("Z")
    assert datetime.fromisoformat(expires_at).timestamp() == expires

    got = await secured.get(url)
    assert got.status_code == 200 and got.content == b"the report"
    ranged = await secured.get(url, headers={"Range": "bytes=4-9"})
    assert ranged.status_code == 206 and ranged.content == b"report"
    inline = await secured.get(url + "&disposition=inline")
    assert inline.headers["content-disposition"].startswith("inline")


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "HEAD", "PATCH"])
async def test_a_get_url_is_for_get_only(secured: httpx.AsyncClient, method: str) -> None:
    await secured.put("/objects/k", content=b"kept", headers=bearer("admin"))
    url = (await presigned(secured, "k", "GET"))["url"]
    response = await secured.request(method, url, content=b"changed")
    assert response.status_code in (403, 405)  # PATCH has no route on /objects/{key}
    if method != "PATCH":
        assert response.status_code == 403
    assert (await secured.get(url)).content == b"kept"


async def test_a_put_url_takes_a_body_or_a_browser_form(secured: httpx.AsyncClient) -> None:
    url = (await presigned(secured, "inbox/photo.jpg", "PUT"))["url"]
    put = await secured.put(url, content=b"raw bytes", headers={"X-Meta-By": "a user"})
    assert put.status_code == 201 and put.json()["metadata"] == {"by": "a user"}

    posted = await secured.post(url, files={"file": ("IMG_1.jpg", b"form bytes", "image/jpeg")})
    assert posted.status_code == 201, posted.text
    info = posted.json()
    assert (info["key"], info["filename"], info["content_type"]) == (
        "inbox/photo.jpg",
        "IMG_1.jpg",
        "image/jpeg",
    )
    assert posted.headers["location"] == "http://gateway.test/objects/inbox/photo.jpg"
    stored = await secured.get("/objects/inbox/photo.jpg", headers=bearer("admin"))
    assert stored.content == b"form bytes"

    for method in ("GET", "HEAD", "DELETE"):
        assert (await secured.request(method, url)).status_code == 403, method


async def test_a_form_to_a_put_url_holds_one_file(secured: httpx.AsyncClient) -> None:
    url = (await presigned(secured, "inbox/one", "PUT"))["url"]
    files = [("file", ("a", b"first")), ("file", ("b", b"second"))]
    assert (await secured.post(url, files=files)).status_code == 400
    gone = await secured.get("/objects/inbox/one", headers=bearer("admin"))
    assert gone.status_code == 404


async def test_a_changed_url_is_forbidden(secured: httpx.AsyncClient) -> None:
    await secured.put("/objects/k1", content=b"one", headers=bearer("admin"))
    await secured.put("/objects/k2", content=b"two", headers=bearer("admin"))
    url = (await presigned(secured, "k1", "GET"))["url"]
    query = dict(parse_qsl(urlsplit(url).query))
    signature, expires = query["signature"], int(query["expires"])
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    changed = [
        url.replace("/objects/k1?", "/objects/k2?"),
        url.replace("/objects/k1?", "/download/k1?"),
        with_query(url, signature=flipped),
        with_query(url, signature=signature.upper()),
        with_query(url, expires=str(expires + 3600)),
        with_query(url, expires=str(expires - 1)),
        with_query(url, extra="1"),
        url.split("&signature=")[0],
    ]
    for other in changed:
        response = await secured.get(other)
        assert response.status_code in (401, 403), other
        assert response.content not in (b"one", b"two")
    # a token does not rescue a broken URL
    response = await secured.get(with_query(url, signature=flipped), headers=bearer("admin"))
    assert response.status_code == 403


async def test_an_expired_url_is_forbidden(secured: httpx.AsyncClient) -> None:
    await secured.put("/objects/k", content=b"x", headers=bearer("admin"))
    past = int(time.time()) - 1
    old = "http://gateway.test/objects/k?" + urlencode(presign.query(SECRET, "GET", "k", past))
    response = await secured.get(old)
    assert response.status_code == 403 and "expired" in response.json()["detail"]

    url = (await presigned(secured, "k", "GET", expires_in=1))["url"]
    deadline = time.monotonic() + 10
    while (status := (await secured.get(url)).status_code) == 200:
        assert time.monotonic() < deadline, "the URL outlived its expiry"
        await asyncio.sleep(0.05)
    assert status == 403


async def test_urls_are_only_given_within_the_callers_reach(secured: httpx.AsyncClient) -> None:
    await presigned(secured, "tenant-a/x", "GET", token="a-read")
    await presigned(secured, "tenant-a/x", "PUT", token="a-write")
    for token, key, method in [
        ("a-read", "tenant-b/x", "GET"),
        ("a-read", "tenant-a/x", "PUT"),
        ("a-write", "tenant-a/x", "GET"),
    ]:
        response = await secured.post(
            "/presign",
            json={"key": key, "method": method, "expires_in": 60},
            headers=bearer(token),
        )
        assert response.status_code == 403


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"key": "k", "method": "GET", "expires_in": 0}, 400, "bad-request"),
        ({"key": "k", "method": "GET", "expires_in": 604801}, 400, "bad-request"),
        ({"key": "k", "method": "GET", "expires_in": 604800}, 200, None),
        ({"key": "k", "method": "DELETE", "expires_in": 60}, 400, "bad-request"),
        ({"key": "k", "method": "GET"}, 400, "bad-request"),
        ({"key": "a//b", "method": "GET", "expires_in": 60}, 400, "invalid-key"),
        ({"key": "", "method": "PUT", "expires_in": 60}, 400, "invalid-key"),
        ("not json", 400, "bad-request"),
        ("x" * 20_000, 413, "too-large"),
    ],
)
async def test_presign_requests_are_validated(
    secured: httpx.AsyncClient, body: Any, status: int, code: str | None
) -> None:
    if isinstance(body, str):
        response = await secured.post("/presign", content=body, headers=bearer("admin"))
    else:
        response = await secured.post("/presign", json=body, headers=bearer("admin"))
    assert response.status_code == status, response.text
    if code:
        assert response.json()["code"] == code


async def test_without_a_signing_key_there_are_no_presigned_urls(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            response = await client.post(
                "/presign", json={"key": "k", "method": "GET", "expires_in": 60}
            )
            assert response.status_code == 404
            assert "GATEWAY_SIGNING_KEY" in response.json()["detail"]
            await client.put("/objects/k", content=b"x")
            query = urlencode(presign.query(SECRET, "GET", "k", int(time.time()) + 60))
            assert (await client.get(f"/objects/k?{query}")).status_code == 403
