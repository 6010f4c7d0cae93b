"""The HTTP contract of ../shared/API.md for objects, in-process (httpx ASGITransport)."""

import base64
import hashlib
import os
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from gateway.settings import Settings
from tests.conftest import leftovers

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert {"type", "title", "detail"} <= body.keys()
    assert "Traceback" not in response.text and "/tmp" not in response.text


def form(files: list[tuple[str, bytes]], **fields: str) -> dict[str, Any]:
    return {
        "data": fields,
        "files": [("file", (name, data, "application/octet-stream")) for name, data in files],
    }


# --- PUT ----------------------------------------------------------------------------


async def test_put_stores_and_describes(client: httpx.AsyncClient) -> None:
    data = os.urandom(100_000)
    response = await client.put(
        "/objects/docs/report.pdf",
        content=data,
        headers={"X-Meta-Author": "Ann", "X-Meta-Year": "2026"},
    )
    assert response.status_code == 201
    info = response.json()
    digest = hashlib.sha256(data).hexdigest()
    assert info == {
        "key": "docs/report.pdf",
        "size": len(data),
        "etag": f'"{digest}"',
        "sha256": digest,
        "content_type": "application/pdf",
        "last_modified": info["last_modified"],
        "filename": None,
        "metadata": {"author": "Ann", "year": "2026"},
    }
    assert datetime.fromisoformat(info["last_modified"]).tzinfo is not None
    assert info["last_modified"].endswith("Z")
    assert response.headers["etag"] == info["etag"]
    assert response.headers["location"] == "http://gateway.test/objects/docs/report.pdf"
    assert (await client.get("/objects/docs/report.pdf")).content == data


async def test_put_content_type(client: httpx.AsyncClient) -> None:
    sent = await client.put("/objects/a.bin", content=b"x", headers={"Content-Type": "text/csv"})
    assert sent.json()["content_type"] == "text/csv"
    guessed = await client.put("/objects/b.json", content=b"{}")
    assert guessed.json()["content_type"] == "application/json"
    unknown = await client.put("/objects/c.zzunknown", content=b"x")
    assert unknown.json()["content_type"] == "application/octet-stream"
    got = await client.get("/objects/a.bin")
    assert got.headers["content-type"] == "text/csv"


async def test_put_streams_chunked_bodies(client: httpx.AsyncClient) -> None:
    parts = [os.urandom(70_000) for _ in range(5)]

    async def body():  # no Content-Length: Transfer-Encoding: chunked
        for part in parts:
            yield part

    response = await client.put("/objects/chunked", content=body())
    assert response.status_code == 201
    assert (await client.get("/objects/chunked")).content == b"".join(parts)


async def test_metadata_limit(client: httpx.AsyncClient) -> None:
    response = await client.put("/objects/m", content=b"x", headers={"X-Meta-Big": "v" * 2100})
    assert_problem(response, 400, "bad-request")
    assert (await client.get("/objects/m")).status_code == 404


async def test_metadata_utf8_roundtrip(client: httpx.AsyncClient) -> None:
    response = await client.put(
        "/objects/u", content=b"x", headers={b"X-Meta-Who": "Zoë 日本".encode()}
    )
    assert response.json()["metadata"] == {"who": "Zoë 日本"}
    got = await client.head("/objects/u")
    assert (b"x-meta-who", "Zoë 日本".encode()) in got.headers.raw


async def test_if_none_match_star_creates_only(client: httpx.AsyncClient) -> None:
    first = await client.put("/objects/once", content=b"1", headers={"If-None-Match": "*"})
    assert first.status_code == 201
    second = await client.put("/objects/once", content=b"2", headers={"If-None-Match": "*"})
    assert_problem(second, 412, "precondition-failed")
    assert (await client.get("/objects/once")).content == b"1"
    other = await client.put("/objects/once", content=b"3", headers={"If-None-Match": '"x"'})
    assert_problem(other, 400, "bad-request")


async def test_content_md5(client: httpx.AsyncClient, settings: Settings) -> None:
    data = b"hello world" * 1000
    good = base64.b64encode(hashlib.md5(data).digest()).decode()
    ok = await client.put("/objects/md5", content=data, headers={"Content-MD5": good})
    assert ok.status_code == 201
    wrong = base64.b64encode(hashlib.md5(b"x").digest()).decode()
    bad = await client.put("/objects/md5-bad", content=data, headers={"Content-MD5": wrong})
    assert_problem(bad, 400, "checksum-mismatch")
    assert (await client.get("/objects/md5-bad")).status_code == 404
    malformed = await client.put(
        "/objects/md5-bad", content=data, headers={"Content-MD5": "not base64!"}
    )
    assert_problem(malformed, 400, "bad-request")
    assert leftovers(settings) == []


async def test_x_checksum_sha256(client: httpx.AsyncClient) -> None:
    data = os.urandom(5000)
    good = hashlib.sha256(data).hexdigest()
    ok = await client.put("/objects/s", content=data, headers={"X-Checksum-SHA256": good.upper()})
    assert ok.status_code == 201
    bad = await client.put("/objects/s", content=data + b"!", headers={"X-Checksum-SHA256": good})
    assert_problem(bad, 400, "checksum-mismatch")
    assert (await client.get("/objects/s")).content == data  # the old version is untouched
    malformed = await client.put("/objects/s", content=data, headers={"X-Checksum-SHA256": "ab"})
    assert_problem(malformed, 400, "bad-request")


async def test_size_limit(client: httpx.AsyncClient, settings: Settings) -> None:
    limit = int(settings.max_upload_bytes)
    declared = await client.put(
        "/objects/big", content=b"x", headers={"Content-Length": str(limit + 1)}
    )
    assert_problem(declared, 413, "too-large")
    assert declared.headers["connection"] == "close"

    async def endless():
        chunk = bytes(1024 * 1024)
        for _ in range(limit // len(chunk) + 2):
            yield chunk

    streamed = await client.put("/objects/big", content=endless())
    assert_problem(streamed, 413, "too-large")
    assert (await client.get("/objects/big")).status_code == 404
    assert leftovers(settings) == []
    assert (await client.get("/objects")).json()["objects"] == []
    exact = await client.put("/objects/exact", content=bytes(limit))
    assert exact.status_code == 201


@pytest.mark.parametrize(
    "raw_key",
    [
        "a//b",
        "%2Fa",
        "a/",
        "a/%2E/b",
        "a/%2E%2E/b",
        "a%5Cb",
        "a%00b",
        "a%0Ab",
        "a%7Fb",
        "%zz",
        "%C3",
        "x" * 1025,
        "%2E%2E/x",
        "a/%2E",
    ],
)
async def test_invalid_keys(client: httpx.AsyncClient, raw_key: str) -> None:
    url = httpx.URL("http://gateway.test/objects/" + raw_key)
    for method in ("PUT", "GET", "HEAD", "DELETE"):
        response = await client.request(method, url, content=b"x" if method == "PUT" else None)
        assert response.status_code == 400, (method, raw_key)
        if method != "HEAD":
            assert_problem(response, 400, "invalid-key")


async def test_percent_encoded_keys(client: httpx.AsyncClient) -> None:
    key = "dir/naïve file #1?.txt"
    url = "/objects/" + quote(key, safe="/")
    assert (await client.put(url, content=b"x")).json()["key"] == key
    assert (await client.get(url)).content == b"x"
    assert (await client.get("/objects/" + quote(key, safe=""))).content == b"x"  # %2F too
    listing = (await client.get("/objects")).json()
    assert [info["key"] for info in listing["objects"]] == [key]


# --- POST /objects (forms) ---------------------------------------------------------------


async def test_form_upload(client: httpx.AsyncClient) -> None:
    a, b = os.urandom(200_000), b"second file"
    response = await client.post("/objects", **form([("a.bin", a), ("dir\\b.txt", b)]))
    assert response.status_code == 201, response.text
    stored = response.json()["objects"]
    assert [(o["key"], o["filename"], o["size"]) for o in stored] == [
        ("a.bin", "a.bin", len(a)),
        ("b.txt", "b.txt", len(b)),
    ]
    assert (await client.get("/objects/a.bin")).content == a
    assert (await client.get("/objects/b.txt")).content == b


async def test_form_prefix_and_key(client: httpx.AsyncClient) -> None:
    prefixed = await client.post("/objects", **form([("x.txt", b"1")], prefix="up/"))
    assert prefixed.json()["objects"][0]["key"] == "up/x.txt"
    exact = await client.post("/objects", **form([("ignored.txt", b"2")], key="exact/k"))
    assert exact.json()["objects"][0]["key"] == "exact/k"
    assert exact.json()["objects"][0]["filename"] == "ignored.txt"
    assert exact.headers["location"].endswith("/objects/exact/k")
    two = await client.post("/objects", **form([("1", b"1"), ("2", b"2")], key="k2"))
    assert_problem(two, 400, "bad-request")
    assert (await client.get("/objects/k2")).status_code == 404


async def test_form_bad_inputs(client: httpx.AsyncClient, settings: Settings) -> None:
    no_file = await client.post("/objects", data={"prefix": "x/"}, files={"other": ("f", b"1")})
    assert_problem(no_file, 400, "bad-request")
    only_fields = await client.post(
        "/objects", data={"prefix": "x/"}, files={"file": (None, b"", None)}
    )
    assert_problem(only_fields, 400, "bad-request")
    empty_name = await client.post("/objects", **form([("dir/", b"1")]))
    assert_problem(empty_name, 400, "bad-request")
    bad_key = await client.post("/objects", **form([("..", b"1")]))
    assert_problem(bad_key, 400, "invalid-key")
    bad_prefix = await client.post("/objects", **form([("x", b"1")], prefix="/abs/"))
    assert_problem(bad_prefix, 400, "invalid-key")
    not_a_form = await client.post(
        "/objects", content=b"raw", headers={"Content-Type": "application/octet-stream"}
    )
    assert_problem(not_a_form, 400, "bad-request")
    no_boundary = await client.post(
        "/objects", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}
    )
    assert_problem(no_boundary, 400, "bad-request")
    assert (await client.get("/objects")).json()["objects"] == []
    assert leftovers(settings) == []


async def test_form_is_all_or_nothing(client: httpx.AsyncClient, settings: Settings) -> None:
    limit = int(settings.max_upload_bytes)
    response = await client.post("/objects", **form([("small", b"ok"), ("huge", bytes(limit + 1))]))
    assert_problem(response, 413, "too-large")
    assert (await client.get("/objects")).json()["objects"] == []
    assert leftovers(settings) == []
    assert (await client.get("/objects")).json()["objects"] == []


async def test_field_after_files_is_refused(client: httpx.AsyncClient) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
        f'\r\ndata\r\n--{boundary}\r\nContent-Disposition: form-data; name="prefix"\r\n'
        f"\r\np/\r\n--{boundary}--\r\n"
    ).encode()
    response = await client.post(
        "/objects",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_problem(response, 400, "bad-request")
    assert (await client.get("/objects/f")).status_code == 404


# --- compatibility endpoints ------------------------------------------------------------


async def test_upload_and_download_compat(client: httpx.AsyncClient) -> None:
    data = os.urandom(50_000)
    response = await client.post("/upload/", files={"file": ("C:\\tmp\\big.bin", data)})
    assert response.status_code == 200
    body = response.json()
    assert body["filename"] == "big.bin" and body["message"] == "Upload successful"
    assert body["object"]["key"] == "big.bin" and body["object"]["size"] == len(data)
    download = await client.get("/download/big.bin")
    assert download.content == data
    assert download.headers["content-disposition"] == 'attachment; filename="big.bin"'
    partial = await client.get("/download/big.bin", headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206 and partial.content == data[10:20]
    two = await client.post("/upload/", files=[("file", ("1", b"1")), ("file", ("2", b"2"))])
    assert_problem(two, 400, "bad-request")
    assert (await client.get("/objects/1")).status_code == 404
    assert (await client.get("/download/nope")).status_code == 404


# --- GET and HEAD -------------------------------------------------------------------------


@pytest.fixture
async def stored(client: httpx.AsyncClient) -> tuple[bytes, dict[str, str]]:
    data = os.urandom(10_000)
    response = await client.put(
        "/objects/photos/日本.jpg", content=data, headers={"Content-Type": "image/jpeg"}
    )
    return data, response.json()


GET_URL = "/objects/photos/" + quote("日本.jpg")


async def test_get_headers(client: httpx.AsyncClient, stored: tuple[bytes, dict]) -> None:
    data, info = stored
    response = await client.get(GET_URL)
    assert response.status_code == 200 and response.content == data
    headers = response.headers
    assert headers["content-length"] == str(len(data))
    assert headers["content-type"] == "image/jpeg"
    assert headers["etag"] == info["etag"]
    assert headers["accept-ranges"] == "bytes"
    assert headers["x-checksum-sha256"] == info["sha256"]
    modified = datetime.fromisoformat(info["last_modified"])
    assert headers["last-modified"] == format_datetime(modified, usegmt=True)
    assert headers["content-disposition"] == (
        "attachment; filename=\"__.jpg\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC.jpg"
    )
    inline = await client.get(GET_URL, params={"disposition": "inline"})
    assert inline.headers["content-disposition"].startswith("inline;")
    wrong = await client.get(GET_URL, params={"disposition": "sideways"})
    assert_problem(wrong, 400, "bad-request")


async def test_head(client: httpx.AsyncClient, stored: tuple[bytes, dict]) -> None:
    get = await client.get(GET_URL)
    head = await client.head(GET_URL)
    assert head.status_code == 200 and head.content == b""
    for name in (
        "content-length",
        "content-type",
        "etag",
        "last-modified",
        "accept-ranges",
        "content-disposition",
    ):
        assert head.headers[name] == get.headers[name]
    ranged = await client.head(GET_URL, headers={"Range": "bytes=0-9"})
    assert ranged.status_code == 206 and ranged.headers["content-length"] == "10"
    assert (await client.head("/objects/nope")).status_code == 404


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=9990-", 9990, 9999),
        ("bytes=-10", 9990, 9999),
        ("bytes=5000-999999", 5000, 9999),
        ("bytes=0-0", 0, 0),
    ],
)
async def test_ranges(
    client: httpx.AsyncClient, stored: tuple[bytes, dict], header: str, start: int, end: int
) -> None:
    data, _ = stored
    response = await client.get(GET_URL, headers={"Range": header})
    assert response.status_code == 206
    assert response.content == data[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(data)}"
    assert response.headers["content-length"] == str(end - start + 1)


@pytest.mark.parametrize("header", ["bytes=10000-", "bytes=20000-30000", "bytes=-0"])
async def test_unsatisfiable_range(
    client: httpx.AsyncClient, stored: tuple[bytes, dict], header: str
) -> None:
    response = await client.get(GET_URL, headers={"Range": header})
    assert_problem(response, 416, "range-not-satisfiable")
    assert response.headers["content-range"] == "bytes */10000"


@pytest.mark.parametrize("header", ["bytes=abc", "pages=1-2", "bytes=5-1", "bytes=0-1,5-6"])
async def test_malformed_or_multiple_ranges_get_200(
    client: httpx.AsyncClient, stored: tuple[bytes, dict], header: str
) -> None:
    response = await client.get(GET_URL, headers={"Range": header})
    assert response.status_code == 200 and response.content == stored[0]


async def test_conditionals(client: httpx.AsyncClient, stored: tuple[bytes, dict]) -> None:
    _, info = stored
    etag = info["etag"]
    modified = datetime.fromisoformat(info["last_modified"])
    later = format_datetime(modified + timedelta(hours=1), usegmt=True)
    earlier = format_datetime(modified - timedelta(hours=1), usegmt=True)

    async def status(**headers: str) -> int:
        response = await client.get(GET_URL, headers=headers)
        if response.status_code == 304:
            assert response.content == b"" and response.headers["etag"] == etag
        return response.status_code

    assert await status(**{"If-None-Match": etag}) == 304
    assert await status(**{"If-None-Match": '"other"'}) == 200
    assert await status(**{"If-Modified-Since": later}) == 304
    assert await status(**{"If-Modified-Since": earlier}) == 200
    assert await status(**{"If-Match": etag}) == 200
    assert await status(**{"If-Match": '"other"'}) == 412
    assert await status(**{"If-Unmodified-Since": earlier}) == 412
    assert await status(**{"If-Unmodified-Since": later}) == 200
    # 412 outranks an unsatisfiable range
    response = await client.get(GET_URL, headers={"If-Match": '"x"', "Range": "bytes=99999-"})
    assert_problem(response, 412, "precondition-failed")
    head = await client.head(GET_URL, headers={"If-None-Match": etag})
    assert head.status_code == 304


async def test_if_range(client: httpx.AsyncClient, stored: tuple[bytes, dict]) -> None:
    data, info = stored
    fresh = await client.get(GET_URL, headers={"Range": "bytes=0-4", "If-Range": info["etag"]})
    assert fresh.status_code == 206 and fresh.content == data[:5]
    stale = await client.get(GET_URL, headers={"Range": "bytes=0-4", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == data
    stale_416 = await client.get(GET_URL, headers={"Range": "bytes=99999-", "If-Range": '"old"'})
    assert stale_416.status_code == 200 and stale_416.content == data
    date = fresh.headers["last-modified"]
    by_date = await client.get(GET_URL, headers={"Range": "bytes=0-4", "If-Range": date})
    assert by_date.status_code == 206


async def test_missing_object(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/objects/nope"), 404, "not-found")


# --- DELETE -----------------------------------------------------------------------------------


async def test_delete(client: httpx.AsyncClient, settings: Settings) -> None:
    await client.put("/objects/d", content=b"x")
    response = await client.delete("/objects/d")
    assert response.status_code == 204 and response.content == b""
    assert_problem(await client.delete("/objects/d"), 404, "not-found")
    assert_problem(await client.get("/objects/d"), 404, "not-found")
    assert (await client.get("/objects")).json()["objects"] == []


# --- listing -----------------------------------------------------------------------------------


async def test_listing(client: httpx.AsyncClient) -> None:
    for key in ["b", "a/1", "a/2", "a", "ä", "a/sub/x"]:
        await client.put("/objects/" + quote(key), content=key.encode())
    everything = (await client.get("/objects")).json()
    assert [o["key"] for o in everything["objects"]] == ["a", "a/1", "a/2", "a/sub/x", "b", "ä"]
    assert everything["prefixes"] == [] and everything["next_cursor"] is None
    assert set(everything["objects"][0]) == {
        "key",
        "size",
        "etag",
        "sha256",
        "content_type",
        "last_modified",
        "filename",
        "metadata",
    }
    rolled = (await client.get("/objects", params={"delimiter": "/"})).json()
    assert [o["key"] for o in rolled["objects"]] == ["a", "b", "ä"]
    assert rolled["prefixes"] == ["a/"]
    inner = (await client.get("/objects", params={"prefix": "a/", "delimiter": "/"})).json()
    assert [o["key"] for o in inner["objects"]] == ["a/1", "a/2"]
    assert inner["prefixes"] == ["a/sub/"]
    keys, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/objects", params=params)).json()
        keys += [o["key"] for o in page["objects"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert keys == [o["key"] for o in everything["objects"]]


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"cursor": "not*base64"}]
)
async def test_listing_bad_parameters(client: httpx.AsyncClient, params: dict) -> None:
    assert_problem(await client.get("/objects", params=params), 400, "bad-request")


# --- health, errors, docs --------------------------------------------------------------------


async def test_health(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["backend"] in ("local", "s3")


async def test_readyz_fails_without_the_data_folder(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    if settings.backend != "local":
        pytest.skip("local backend only (tests/test_s3.py covers an unreachable S3)")
    blobs = settings.data_dir / "blobs"
    blobs.rename(settings.data_dir / "moved")
    try:
        assert_problem(await client.get("/readyz"), 503, "backend-unavailable")
    finally:
        (settings.data_dir / "moved").rename(blobs)
    assert (await client.get("/readyz")).status_code == 200


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/nothing-here"), 404, "not-found")
    response = await client.patch("/objects/x", content=b"")
    assert response.status_code == 405
    assert response.json()["code"] == "bad-request"


async def test_openapi_shows_both_request_bodies(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    put_body = spec["paths"]["/objects/{key}"]["put"]["requestBody"]["content"]
    assert put_body["application/octet-stream"]["schema"]["format"] == "binary"
    form_body = spec["paths"]["/objects"]["post"]["requestBody"]["content"]
    assert set(form_body["multipart/form-data"]["schema"]["properties"]) == {
        "file",
        "prefix",
        "key",
    }
    compat = spec["paths"]["/upload/"]["post"]["requestBody"]["content"]
    assert "file" in compat["multipart/form-data"]["schema"]["properties"]


async def test_data_stays_inside_the_data_folder(
    client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    if settings.backend != "local":
        pytest.skip("local backend only")
    for key in ["..%2F..%2Fescape", "a%2F..%2F..%2Fb", "%2E%2E"]:
        await client.put(httpx.URL("http://gateway.test/objects/" + key), content=b"x")
    await client.put("/objects/" + quote("../x", safe=""), content=b"x")
    outside = [
        p
        for p in tmp_path.rglob("*")
        if settings.data_dir not in p.parents and p != settings.data_dir
    ]
    assert outside == []
