"""Resumable uploads (tus 1.0.0) over HTTP, in-process, on each backend."""

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import ClientDisconnect

from gateway.app import create_app
from gateway.settings import Settings
from gateway.tus import encode_metadata
from tests.conftest import bearer, leftovers

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
MiB = 1024 * 1024


async def create(client: httpx.AsyncClient, length: int | None, **metadata: str) -> str:
    headers = {**TUS, "Upload-Metadata": encode_metadata(metadata)}
    if length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(length)
    response = await client.post("/uploads/", headers=headers)
    assert response.status_code == 201, response.text
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["upload-expires"].endswith("GMT")
    location = response.headers["location"]
    assert location.startswith("http://gateway.test/uploads/")
    return location


async def patch(
    client: httpx.AsyncClient, url: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    return await client.patch(
        url, content=data, headers={**PATCH, "Upload-Offset": str(offset), **headers}
    )


async def test_options(client: httpx.AsyncClient, settings: Settings) -> None:
    for url in ("/uploads/", "/uploads/0123456789abcdef0123456789abcdef"):
        response = await client.options(url)
        assert response.status_code == 200
        assert response.headers["tus-resumable"] == "1.0.0"
        assert response.headers["tus-version"] == "1.0.0"
        assert set(response.headers["tus-extension"].split(",")) == {
            "creation",
            "creation-with-upload",
            "creation-defer-length",
            "termination",
            "checksum",
            "expiration",
        }
        assert response.headers["tus-max-size"] == str(int(settings.max_upload_bytes))
        assert response.headers["tus-checksum-algorithm"] == "sha1,md5,sha256"


async def test_upload_in_chunks_commits_the_object(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    data = os.urandom(12 * MiB + 12345)
    url = await create(
        client,
        len(data),
        filename="C:\\films\\clip.mp4",
        prefix="videos/",
        content_type="video/mp4",
    )
    head = await client.head(url, headers=TUS)
    assert head.status_code == 200 and head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == str(len(data))
    assert head.headers["cache-control"] == "no-store"
    assert "x-object-key" not in head.headers
    offset = 0
    for size in (3 * MiB, 5 * MiB + 1, 100, len(data)):
        chunk = data[offset : offset + size]
        response = await patch(client, url, offset, chunk)
        assert response.status_code == 204, response.text
        offset += len(chunk)
        assert response.headers["upload-offset"] == str(offset)
        assert response.headers["upload-expires"].endswith("GMT")
        if offset == len(data):
            break
    assert response.headers["x-object-key"] == "videos/clip.mp4"
    head = await client.head(url, headers=TUS)
    assert head.headers["upload-offset"] == str(len(data))
    assert head.headers["x-object-key"] == "videos/clip.mp4"
    got = await client.get("/objects/videos/clip.mp4")
    assert got.content == data
    assert got.headers["content-type"] == "video/mp4"
    assert got.headers["x-checksum-sha256"] == hashlib.sha256(data).hexdigest()
    assert got.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    info = (await client.get("/objects", params={"prefix": "videos/"})).json()["objects"]
    assert [(o["key"], o["filename"], o["size"]) for o in info] == [
        ("videos/clip.mp4", "clip.mp4", len(data))
    ]
    assert leftovers(settings) == []


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ({"key": "exact/name.bin", "filename": "ignored"}, "exact/name.bin"),
        ({"filename": "a.txt"}, "a.txt"),
        ({"prefix": "p/"}, None),
    ],
)
async def test_the_objects_key(
    client: httpx.AsyncClient, metadata: dict[str, str], key: str | None
) -> None:
    url = await create(client, 3, **metadata)
    response = await patch(client, url, 0, b"abc")
    upload_id = url.rsplit("/", 1)[1]
    assert response.headers["x-object-key"] == (key or f"p/{upload_id}")


async def test_creation_with_upload_and_a_deferred_length(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/uploads/",
        content=b"first ",
        headers={
            **PATCH,
            "Upload-Defer-Length": "1",
            "Upload-Metadata": encode_metadata({"key": "d"}),
        },
    )
    assert response.status_code == 201 and response.headers["upload-offset"] == "6"
    url = response.headers["location"]
    head = await client.head(url, headers=TUS)
    assert head.headers["upload-defer-length"] == "1" and "upload-length" not in head.headers
    done = await patch(client, url, 6, b"last", **{"Upload-Length": "10"})
    assert done.status_code == 204 and done.headers["x-object-key"] == "d"
    assert (await client.get("/objects/d")).content == b"first last"


async def test_empty_upload(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/uploads/",
        headers={**TUS, "Upload-Length": "0", "Upload-Metadata": encode_metadata({"key": "empty"})},
    )
    assert response.status_code == 201 and response.headers["x-object-key"] == "empty"
    got = await client.get("/objects/empty")
    assert got.status_code == 200 and got.content == b""


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256"])
async def test_checksums(client: httpx.AsyncClient, algorithm: str) -> None:
    url = await create(client, 8, key=f"sum-{algorithm}")
    good = base64.b64encode(hashlib.new(algorithm, b"1234").digest()).decode()
    ok = await patch(client, url, 0, b"1234", **{"Upload-Checksum": f"{algorithm} {good}"})
    assert ok.status_code == 204 and ok.headers["upload-offset"] == "4"
    bad = await patch(client, url, 4, b"5678", **{"Upload-Checksum": f"{algorithm} {good}"})
    assert bad.status_code == 460 and bad.json()["code"] == "checksum-mismatch"
    assert bad.headers["tus-resumable"] == "1.0.0"
    head = await client.head(url, headers=TUS)
    assert head.headers["upload-offset"] == "4"  # the chunk was discarded
    assert (await patch(client, url, 4, b"5678")).status_code == 204
    assert (await client.get(f"/objects/sum-{algorithm}")).content == b"12345678"


async def test_protocol_errors(client: httpx.AsyncClient, settings: Settings) -> None:
    no_version = await client.post("/uploads/", headers={"Upload-Length": "1"})
    assert no_version.status_code == 412 and no_version.headers["tus-version"] == "1.0.0"
    assert no_version.json()["code"] == "precondition-failed"
    for headers in (
        {},
        {"Upload-Length": "1", "Upload-Defer-Length": "1"},
        {"Upload-Length": "-1"},
        {"Upload-Defer-Length": "2"},
        {"Upload-Length": "1", "Upload-Metadata": "key !!!"},
        {"Upload-Length": "1", "Upload-Metadata": "a YQ==,a YQ=="},
        {"Upload-Length": "1", "Upload-Metadata": encode_metadata({"key": "../x"})},
    ):
        response = await client.post("/uploads/", headers={**TUS, **headers})
        assert response.status_code == 400, headers
        assert response.headers["tus-resumable"] == "1.0.0"
    too_big = await client.post(
        "/uploads/", headers={**TUS, "Upload-Length": str(int(settings.max_upload_bytes) + 1)}
    )
    assert too_big.status_code == 413
    url = await create(client, 10, key="errors")
    wrong_type = await client.patch(
        url,
        content=b"x",
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/octet-stream"},
    )
    assert wrong_type.status_code == 415
    assert (await patch(client, url, 3, b"abc")).status_code == 409
    no_offset = await client.patch(url, content=b"x", headers=PATCH)
    assert no_offset.status_code == 400
    past_end = await patch(client, url, 0, b"x" * 11)
    assert past_end.status_code == 413
    assert (await client.head(url, headers=TUS)).headers["upload-offset"] == "0"
    bad_algorithm = await patch(client, url, 0, b"x", **{"Upload-Checksum": "crc32 AAAA"})
    assert bad_algorithm.status_code == 400
    unknown = "/uploads/0123456789abcdef0123456789abcdef"
    assert (await client.head(unknown, headers=TUS)).status_code == 404
    assert (await patch(client, unknown, 0, b"x")).status_code == 404
    assert (await client.head("/uploads/not-an-id", headers=TUS)).status_code == 404


async def test_termination(client: httpx.AsyncClient, settings: Settings) -> None:
    url = await create(client, 20 * MiB, key="terminated")
    assert (await patch(client, url, 0, os.urandom(6 * MiB))).status_code == 204
    deleted = await client.delete(url, headers=TUS)
    assert deleted.status_code == 204 and deleted.headers["tus-resumable"] == "1.0.0"
    assert (await client.head(url, headers=TUS)).status_code == 404
    assert (await patch(client, url, 6 * MiB, b"x")).status_code == 404
    assert (await client.get("/objects/terminated")).status_code == 404
    assert leftovers(settings) == []


async def test_concurrent_patches_one_wins(client: httpx.AsyncClient) -> None:
    url = await create(client, 16 * MiB, key="contended")
    started = asyncio.Event()

    async def slow_body():
        yield os.urandom(MiB)
        started.set()
        await asyncio.sleep(0)  # let the second PATCH arrive while this one holds the upload
        for _ in range(7):
            yield os.urandom(MiB)
            await asyncio.sleep(0.01)

    first = asyncio.create_task(patch(client, url, 0, slow_body()))
    await started.wait()
    second = await patch(client, url, 0, b"y" * 10)
    assert second.status_code in (409, 423)
    assert (await first).status_code == 204
    head = await client.head(url, headers=TUS)
    assert head.headers["upload-offset"] == str(8 * MiB)


async def test_a_broken_off_patch_keeps_what_arrived(client: httpx.AsyncClient) -> None:
    url = await create(client, 12 * MiB, key="broken")
    data = os.urandom(12 * MiB)

    async def breaks_off():
        yield data[: 7 * MiB]
        raise ClientDisconnect()  # as the server sees a client that went away

    await patch(client, url, 0, breaks_off())
    offset = int((await client.head(url, headers=TUS)).headers["upload-offset"])
    assert 0 < offset <= 7 * MiB
    done = await patch(client, url, offset, data[offset:])
    assert done.status_code == 204 and done.headers["x-object-key"] == "broken"
    got = await client.get("/objects/broken")
    assert got.content == data  # nothing counted twice, nothing lost
    assert got.headers["x-checksum-sha256"] == hashlib.sha256(data).hexdigest()


# --- access -----------------------------------------------------------------------------


async def test_every_request_needs_write_on_the_uploads_key(secured: httpx.AsyncClient) -> None:
    metadata = {"Upload-Metadata": encode_metadata({"key": "tenant-a/up.bin"})}
    create_a = {**TUS, "Upload-Length": "4", **metadata}
    assert (await secured.post("/uploads/", headers=create_a)).status_code == 401
    refused = await secured.post("/uploads/", headers={**create_a, **bearer("a-read")})
    assert refused.status_code == 403
    elsewhere = await secured.post(
        "/uploads/",
        headers={
            **TUS,
            "Upload-Length": "4",
            **bearer("a-write"),
            "Upload-Metadata": encode_metadata({"key": "tenant-b/up.bin"}),
        },
    )
    assert elsewhere.status_code == 403
    created = await secured.post("/uploads/", headers={**create_a, **bearer("a-write")})
    assert created.status_code == 201
    url = created.headers["location"]
    # another tenant, or no token, learns nothing of this upload id
    for who, status in ((None, 401), ("report", 403), ("a-read", 403)):
        auth = bearer(who) if who else {}
        assert (await secured.head(url, headers={**TUS, **auth})).status_code == status
        attempt = await patch(secured, url, 0, b"evil", **auth)
        assert attempt.status_code == status
        assert (await secured.delete(url, headers={**TUS, **auth})).status_code == status
    done = await patch(secured, url, 0, b"good", **bearer("a-write"))
    assert done.status_code == 204 and done.headers["x-object-key"] == "tenant-a/up.bin"
    assert (await secured.get("/objects/tenant-a/up.bin", headers=bearer("a-read"))).content == (
        b"good"
    )
    options = await secured.options("/uploads/")
    assert options.status_code == 200  # discovery needs no token


async def test_a_busy_upload_is_judged_before_it_is_said_busy(
    secured: httpx.AsyncClient,
) -> None:
    """While one PATCH holds an upload, another tenant still gets 403 (not 423, which would
    tell it the upload exists and is in use), and a body past the length still 413."""
    metadata = {"Upload-Metadata": encode_metadata({"key": "tenant-a/busy.bin"})}
    created = await secured.post(
        "/uploads/", headers={**TUS, "Upload-Length": str(8 * MiB), **metadata, **bearer("a-write")}
    )
    url = created.headers["location"]
    started, go_on = asyncio.Event(), asyncio.Event()

    async def held_body():
        yield os.urandom(MiB)
        started.set()
        await go_on.wait()
        yield os.urandom(7 * MiB)

    first = asyncio.create_task(patch(secured, url, 0, held_body(), **bearer("a-write")))
    await started.wait()
    try:
        assert (await patch(secured, url, 0, b"evil", **bearer("report"))).status_code == 403
        too_long = await patch(secured, url, 0, b"x" * (8 * MiB + 1), **bearer("a-write"))
        assert too_long.status_code == 413
        busy = await patch(secured, url, 0, b"x", **bearer("a-write"))
        assert busy.status_code == 423
    finally:
        go_on.set()
    done = await first
    assert done.status_code == 204 and done.headers["upload-offset"] == str(8 * MiB)
    assert (await patch(secured, url, 8 * MiB, b"", **bearer("report"))).status_code == 403


# --- expiry --------------------------------------------------------------------------------


@pytest.fixture
async def expiring(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    application = create_app(settings.model_copy(update={"upload_expiry": timedelta(seconds=1)}))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            yield c, application


async def test_expired_uploads_are_gone_and_swept(
    expiring: tuple[httpx.AsyncClient, FastAPI], settings: Settings
) -> None:
    client, _ = expiring
    expired_before = expired_count()
    url = await create(client, 8 * MiB, key="expires")
    assert (await patch(client, url, 0, os.urandom(6 * MiB))).status_code == 204
    deadline = asyncio.get_running_loop().time() + 20
    while (status := (await client.head(url, headers=TUS)).status_code) == 200:
        assert asyncio.get_running_loop().time() < deadline, "the upload never expired"
        await asyncio.sleep(0.1)
    assert status in (410, 404)  # expired, and perhaps already swept
    assert (await patch(client, url, 6 * MiB, b"x")).status_code in (410, 404)
    # the server's periodic sweep (every quarter of the expiry) removes it and its bytes
    while (await client.head(url, headers=TUS)).status_code != 404:
        assert asyncio.get_running_loop().time() < deadline, "the upload was never swept"
        await asyncio.sleep(0.1)
    assert leftovers(settings) == []
    assert (await client.get("/objects/expires")).status_code == 404
    # counted once the sweep returns, a moment after its thread removed the files
    while expired_count() <= expired_before:
        assert asyncio.get_running_loop().time() < deadline, "the expiry was never counted"
        await asyncio.sleep(0.1)


def expired_count() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("gateway_tus_uploads_total", {"event": "expired"}) or 0.0


async def test_a_last_patch_whose_completion_fails_can_be_completed_later(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 the last PATCH records the final offset before it completes the multipart
    upload: if completing fails (or the process dies there), the upload is not stuck on a
    tail object that is gone, and an empty PATCH at the end completes it."""
    if settings.backend != "s3":
        pytest.skip("the S3 backend's own bookkeeping")
    from gateway.errors import BackendError
    from gateway.storage import s3_uploads

    application = create_app(settings)
    async with application.router.lifespan_context(application):
        s3 = application.state.storage.backend
        real_call = s3.call
        outage = ["complete_multipart_upload", "put_object"]

        async def call(operation: str, **params: object) -> object:
            # S3 goes away as the upload is completed, for the next write too: like a
            # process that dies there, the request cannot record anything afterwards
            if outage and operation == outage[0]:
                outage.pop(0)
                raise BackendError("S3 went away.")
            return await real_call(operation, **params)

        monkeypatch.setattr(s3, "call", call)
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            data = os.urandom(7 * MiB)
            url = await create(c, len(data), key="late.bin")
            assert (await patch(c, url, 0, data[: 3 * MiB])).status_code == 204  # a tail
            assert (await patch(c, url, 3 * MiB, data[3 * MiB :])).status_code == 502
            head = await c.head(url, headers=TUS)
            assert head.headers["upload-offset"] == str(len(data))  # not stuck at 3 MiB
            # the dead request's lease runs out (LEASE_TTL) before another may go on
            later = time.time() + s3_uploads.LEASE_TTL + 1
            monkeypatch.setattr(s3_uploads, "time", SimpleNamespace(time=lambda: later))
            done = await patch(c, url, len(data), b"")
            assert done.status_code == 204, done.text
            assert done.headers["x-object-key"] == "late.bin"
            assert (await c.get("/objects/late.bin")).content == data
