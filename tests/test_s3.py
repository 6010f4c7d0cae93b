"""What is particular to the s3 backend, against a real moto server: multipart uploads,
their failure paths (asserted on ListMultipartUploads), connection health, error mapping."""

import asyncio
import hashlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest

from gateway.errors import BackendError, BackendUnavailable, ChecksumMismatch, PreconditionFailed
from gateway.settings import Settings
from gateway.storage.base import UploadSpec, WriteSpec
from gateway.storage.s3 import S3Storage
from gateway.storage.s3_upload import BufferPool, HeldBytes
from gateway.testing import MotoGateway, MotoServer, gateway_on_moto, s3_environment
from tests.conftest import s3_settings
from tests.faults import FaultProxy

MiB = 1024 * 1024


def open_uploads(moto: MotoServer, bucket: str) -> list[dict[str, Any]]:
    uploads: list[dict[str, Any]] = (
        moto.s3().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    )
    return uploads


async def body(
    size: int, chunk: int = 256 * 1024, fail_at: int | None = None
) -> AsyncIterator[bytes]:
    sent = 0
    while sent < size:
        if fail_at is not None and sent >= fail_at:
            raise ConnectionResetError("the client went away")
        step = min(chunk, size - sent)
        yield os.urandom(step)
        sent += step


@pytest.fixture
def proxy(moto: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(int(moto.url.rsplit(":", 1)[1])) as fault_proxy:
        yield fault_proxy


@pytest.fixture
async def s3(moto: MotoServer, proxy: FaultProxy) -> AsyncIterator[S3Storage]:
    """The s3 backend on moto, through the fault proxy, with 5 MiB parts."""
    settings = s3_settings(moto, s3_part_size="5MiB", s3_max_concurrency=3)
    settings = settings.model_copy(update={"s3_endpoint_url": proxy.url})
    async with S3Storage(settings) as storage:
        yield storage


async def test_multipart_upload_stores_metadata_on_the_object(
    s3: S3Storage, moto: MotoServer
) -> None:
    data = os.urandom(17 * MiB + 5)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 300_000):
            yield data[start : start + 300_000]

    spec = WriteSpec(content_type="video/mp4", filename="naïve clip.mp4", metadata={"owner": "zoë"})
    info = await s3.put("clips/a.mp4", chunks(), spec)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    client = moto.s3()
    head = client.head_object(Bucket=s3.bucket, Key="clips/a.mp4")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-4"')  # 4 parts
    assert head["ContentType"] == "video/mp4"
    assert head["Metadata"] == {"filename": "na%C3%AFve%20clip.mp4", "m-owner": "zo%C3%AB"}
    tags = client.get_object_tagging(Bucket=s3.bucket, Key="clips/a.mp4")["TagSet"]
    assert {tag["Key"]: tag["Value"] for tag in tags} == {
        "sha256": info.sha256,
        "etag": head["ETag"].strip('"'),
    }
    assert await s3.stat("clips/a.mp4") == info
    assert open_uploads(moto, s3.bucket) == []
    got = moto.s3().get_object(Bucket=s3.bucket, Key="clips/a.mp4")["Body"].read()
    assert got == data


async def test_without_object_tagging_the_sha256_is_copied_in(
    s3: S3Storage, moto: MotoServer
) -> None:
    s3.tagging = False  # as on a server without object tagging
    info = await s3.put("copied", body(11 * MiB), WriteSpec())
    head = moto.s3().head_object(Bucket=s3.bucket, Key="copied")
    assert head["Metadata"]["sha256"] == info.sha256
    assert (await s3.stat("copied")).etag == info.etag


async def test_a_tag_of_an_older_version_is_not_believed(s3: S3Storage, moto: MotoServer) -> None:
    await s3.put("k", body(11 * MiB), WriteSpec())
    client = moto.s3()
    # another writer's multipart object lands, and our late tag is written on it
    upload = client.create_multipart_upload(Bucket=s3.bucket, Key="k")["UploadId"]
    part = client.upload_part(Bucket=s3.bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"new")
    client.complete_multipart_upload(
        Bucket=s3.bucket,
        Key="k",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    client.put_object_tagging(
        Bucket=s3.bucket,
        Key="k",
        Tagging={
            "TagSet": [{"Key": "sha256", "Value": "0" * 64}, {"Key": "etag", "Value": "stale-1"}]
        },
    )
    info = await s3.stat("k")
    assert info.sha256 == "" and info.size == 3  # unknown, never wrong
    assert info.etag == client.head_object(Bucket=s3.bucket, Key="k")["ETag"]


async def test_small_objects_are_one_put(s3: S3Storage, moto: MotoServer) -> None:
    info = await s3.put("small", body(MiB), WriteSpec())
    head = moto.s3().head_object(Bucket=s3.bucket, Key="small")
    assert "-" not in head["ETag"] and head["Metadata"]["sha256"] == info.sha256


def test_part_size_grows_to_stay_within_10000_parts() -> None:
    settings = Settings(backend="s3", s3_bucket="b", max_upload_bytes="1TiB")
    storage = S3Storage(settings)
    assert storage.part_size_for(10 * MiB) == 8 * MiB
    assert storage.part_size_for(200 * 1024**3) == 21 * MiB  # 200 GiB / 10,000, rounded up
    assert storage.part_size_for(None) * 10_000 >= 1024**4
    assert storage.part_size_for(None) % MiB == 0


@pytest.mark.parametrize("fail_at", [0, 6 * MiB, 14 * MiB])
async def test_client_gone_aborts_the_upload(s3: S3Storage, moto: MotoServer, fail_at: int) -> None:
    with pytest.raises(ConnectionResetError):
        await s3.put("gone", body(20 * MiB, fail_at=fail_at), WriteSpec())
    assert open_uploads(moto, s3.bucket) == []
    assert moto.s3().list_objects_v2(Bucket=s3.bucket)["KeyCount"] == 0


async def test_checksum_mismatch_aborts_the_upload(s3: S3Storage, moto: MotoServer) -> None:
    spec = WriteSpec(expect_sha256="0" * 64)
    with pytest.raises(ChecksumMismatch):
        await s3.put("bad", body(12 * MiB), spec)
    assert open_uploads(moto, s3.bucket) == []
    assert moto.s3().list_objects_v2(Bucket=s3.bucket)["KeyCount"] == 0


async def test_cancelled_upload_is_aborted(s3: S3Storage, moto: MotoServer) -> None:
    task = asyncio.create_task(s3.put("cancelled", body(40 * MiB, chunk=MiB), WriteSpec()))
    deadline = time.monotonic() + 20
    while not open_uploads(moto, s3.bucket):
        assert time.monotonic() < deadline, "the multipart upload never started"
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert open_uploads(moto, s3.bucket) == []


async def test_s3_failing_mid_upload_aborts_and_recovers(
    s3: S3Storage, moto: MotoServer, proxy: FaultProxy
) -> None:
    proxy.set(cut_after=2 * MiB)  # part uploads die; small requests (the abort) get through
    with pytest.raises((BackendUnavailable, BackendError)):
        await s3.put("faulty", body(16 * MiB), WriteSpec())
    assert proxy.cut > 0
    assert open_uploads(moto, s3.bucket) == []
    proxy.set()  # the fault clears: the same backend object works again
    info = await s3.put("after", body(11 * MiB), WriteSpec())
    assert (await s3.stat("after")).sha256 == info.sha256


async def test_s3_unreachable_is_backend_unavailable(s3: S3Storage, proxy: FaultProxy) -> None:
    proxy.set(refuse=True)
    with pytest.raises(BackendUnavailable):
        await s3.check()
    with pytest.raises(BackendUnavailable):
        await s3.stat("anything")
    proxy.set()
    await s3.check()


async def test_create_only_multipart_uses_a_conditional_complete(
    s3: S3Storage, moto: MotoServer
) -> None:
    # moto checks If-None-Match but not atomically, so the race itself is S3's to win;
    # what is ours is sending the condition with the CompleteMultipartUpload.
    first = await s3.put("once", body(11 * MiB), WriteSpec(create_only=True))
    staged = await s3.stage("once", body(11 * MiB), WriteSpec(create_only=True))
    await s3.put("once", body(6 * MiB), WriteSpec())  # a writer that got there first
    with pytest.raises(PreconditionFailed):
        await staged.commit()
    assert open_uploads(moto, s3.bucket) == []
    assert (await s3.stat("once")).sha256 != first.sha256


async def test_objects_written_by_other_tools(s3: S3Storage, moto: MotoServer) -> None:
    moto.s3().put_object(Bucket=s3.bucket, Key="foreign", Body=b"hello")
    info = await s3.stat("foreign")
    assert info.sha256 == "" and info.etag.startswith('"') and info.size == 5
    reader = await s3.open("foreign")
    async with reader:
        assert b"".join([chunk async for chunk in reader.chunks()]) == b"hello"


async def test_bookkeeping_keys_are_hidden(s3: S3Storage, moto: MotoServer) -> None:
    moto.s3().put_object(Bucket=s3.bucket, Key=".gateway/uploads/x", Body=b"state")
    await s3.put("visible", body(10), WriteSpec())
    assert [o.key for o in (await s3.list()).objects] == ["visible"]
    assert (await s3.list(delimiter="/")).prefixes == []


async def test_sweep_aborts_stale_multipart_uploads(s3: S3Storage, moto: MotoServer) -> None:
    client = moto.s3()
    client.create_multipart_upload(Bucket=s3.bucket, Key="crashed")
    tus = client.create_multipart_upload(Bucket=s3.bucket, Key=".gateway/uploads/u")
    await s3.sweep(older_than=timedelta(seconds=-5))  # everything counts as old
    # (moto reports every upload as initiated in 2010, so only the prefix rule is tested)
    assert [u["Key"] for u in open_uploads(moto, s3.bucket)] == [".gateway/uploads/u"]
    client.abort_multipart_upload(
        Bucket=s3.bucket, Key=".gateway/uploads/u", UploadId=tus["UploadId"]
    )


# --- through HTTP, against a real gateway process -------------------------------------


@pytest.fixture
def gw() -> Iterator[MotoGateway]:
    with gateway_on_moto(
        env={"GATEWAY_MAX_UPLOAD_BYTES": "24MiB", "GATEWAY_S3_PART_SIZE": "5MiB"}
    ) as gateway:
        yield gateway


def test_http_size_limit_aborts_the_upload(gw: MotoGateway) -> None:
    def endless() -> Iterator[bytes]:
        for _ in range(40):
            yield bytes(MiB)

    response = httpx.put(f"{gw.url}/objects/huge", content=endless(), timeout=60)
    assert response.status_code == 413 and response.json()["code"] == "too-large"
    assert open_uploads(gw.moto, gw.bucket) == []
    assert httpx.get(f"{gw.url}/objects/huge").status_code == 404


def test_http_client_gone_aborts_the_upload(gw: MotoGateway) -> None:
    sock = socket.create_connection(("127.0.0.1", gw.gateway.port))
    sock.sendall(b"PUT /objects/cut HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n")
    sock.sendall(os.urandom(12 * MiB))
    deadline = time.monotonic() + 20
    while not open_uploads(gw.moto, gw.bucket):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    sock.close()
    while open_uploads(gw.moto, gw.bucket):
        assert time.monotonic() < deadline, "the multipart upload was left open"
        time.sleep(0.02)
    assert httpx.get(f"{gw.url}/objects/cut").status_code == 404


def test_http_round_trip_and_conditionals(gw: MotoGateway) -> None:
    data = os.urandom(13 * MiB)
    with httpx.Client(base_url=gw.url, timeout=60) as client:
        put = client.put("/objects/rt.bin", content=data)
        assert put.status_code == 201
        etag = put.headers["etag"]
        assert put.json()["sha256"] == hashlib.sha256(data).hexdigest()
        got = client.get("/objects/rt.bin")
        assert got.content == data and got.headers["etag"] == etag
        assert client.get("/objects/rt.bin", headers={"If-None-Match": etag}).status_code == 304
        ranged = client.get("/objects/rt.bin", headers={"Range": "bytes=-100"})
        assert ranged.status_code == 206 and ranged.content == data[-100:]
        assert (
            ranged.headers["content-range"]
            == f"bytes {len(data) - 100}-{len(data) - 1}/{len(data)}"
        )
        bad = client.get("/objects/rt.bin", headers={"Range": f"bytes={len(data)}-"})
        assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(data)}"
        again = client.put("/objects/rt.bin", content=b"x", headers={"If-None-Match": "*"})
        assert again.status_code == 412
        assert client.get("/readyz").json()["backend"] == "s3"


def test_downloads_cut_off_leave_the_pool_healthy(gw: MotoGateway) -> None:
    httpx.put(f"{gw.url}/objects/big", content=os.urandom(8 * MiB), timeout=60)

    def cut_off(_: int) -> None:
        with socket.create_connection(("127.0.0.1", gw.gateway.port)) as sock:
            sock.sendall(b"GET /objects/big HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.recv(65536)

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(cut_off, range(200)))
    # the next requests answer at once: no connection of the pool is stuck on a dead body
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        for _ in range(20):
            assert client.get("/objects/big", headers={"Range": "bytes=0-9"}).status_code == 206


def test_s3_down_gives_503_and_recovers(moto: MotoServer) -> None:
    bucket = moto.create_bucket()
    with FaultProxy(int(moto.url.rsplit(":", 1)[1])) as proxy:
        env = s3_environment(proxy.url, bucket)
        from gateway.testing import running_gateway

        with running_gateway(env=env, ready_path="/healthz") as gateway:
            proxy.set(refuse=True)
            for method, path in [
                ("GET", "/readyz"),
                ("GET", "/objects/x"),
                ("PUT", "/objects/x"),
                ("GET", "/objects"),
            ]:
                response = httpx.request(
                    method,
                    gateway.url + path,
                    content=b"x" if method == "PUT" else None,
                    timeout=60,
                )
                assert response.status_code == 503, (method, path, response.text)
                assert response.json()["code"] == "backend-unavailable"
                assert "Traceback" not in response.text and "127.0.0.1" not in response.text
            proxy.set()
            assert httpx.get(gateway.url + "/readyz").status_code == 200
            assert httpx.put(gateway.url + "/objects/x", content=b"x").status_code == 201


async def test_uploads_share_a_bounded_pool_of_part_buffers(
    s3: S3Storage, moto: MotoServer
) -> None:
    s3.buffers = pool = BufferPool(2)  # two part buffers for the whole process
    infos = await asyncio.gather(*(s3.put(f"k{n}", body(12 * MiB), WriteSpec()) for n in range(4)))
    assert [info.size for info in infos] == [12 * MiB] * 4
    assert pool.peak == 2 and pool.in_use == 0
    with pytest.raises(ConnectionResetError):  # failures give their buffers back too
        await s3.put("gone", body(20 * MiB, fail_at=11 * MiB), WriteSpec())
    assert pool.in_use == 0
    await s3.put("after", body(12 * MiB), WriteSpec())


async def test_a_form_of_more_files_than_part_buffers_is_staged_whole(
    s3: S3Storage, moto: MotoServer
) -> None:
    """Files shorter than a part wait, staged, for the rest of their form: they must not
    keep pool buffers meanwhile (three 2 MiB files and a pool of two used to wait for ever,
    and every other upload with them)."""
    s3.buffers = pool = BufferPool(2)
    staged = []
    for n in range(3):
        staged.append(await asyncio.wait_for(s3.stage(f"form/{n}", body(2 * MiB), WriteSpec()), 30))
    assert pool.in_use == 0
    infos = [await item.commit() for item in staged]
    assert [info.size for info in infos] == [2 * MiB] * 3


async def test_short_staged_bodies_past_the_memory_budget_wait_in_s3(
    s3: S3Storage, moto: MotoServer
) -> None:
    """A form's short files wait for its last one; past HELD_SMALL_BYTES they wait in S3
    as one-part multipart uploads, not in memory: all are committed whole, and a discarded
    form leaves no upload open and no memory held."""
    s3.held_small = held = HeldBytes(3 * MiB)
    data = [os.urandom(2 * MiB) for _ in range(4)]

    async def one(chunk: bytes) -> AsyncIterator[bytes]:
        yield chunk

    form = WriteSpec(grouped=True)
    staged = [await s3.stage(f"form/{n}", one(d), form) for n, d in enumerate(data)]
    assert held.held == 2 * MiB  # the first one only; three wait in S3
    assert len(open_uploads(moto, s3.bucket)) == 3
    infos = [await item.commit() for item in staged]
    assert held.held == 0 and open_uploads(moto, s3.bucket) == []
    for n, (info, d) in enumerate(zip(infos, data, strict=True)):
        assert info.sha256 == hashlib.sha256(d).hexdigest()
        assert (await s3.stat(f"form/{n}")).sha256 == info.sha256
        got = moto.s3().get_object(Bucket=s3.bucket, Key=f"form/{n}")["Body"].read()
        assert got == d

    staged = [await s3.stage(f"gone/{n}", one(d), form) for n, d in enumerate(data)]
    for item in staged:
        await item.discard()
    assert held.held == 0 and open_uploads(moto, s3.bucket) == []
    assert (await s3.list(prefix="gone/")).objects == []

    # a single PUT is committed at once: not counted, always one PutObject
    s3.held_small = HeldBytes(0)
    await s3.put("single", one(data[0]), WriteSpec())
    assert "-" not in moto.s3().head_object(Bucket=s3.bucket, Key="single")["ETag"]


async def test_freed_part_buffers_are_reused_then_given_back_when_idle(
    s3: S3Storage, moto: MotoServer
) -> None:
    s3.buffers = pool = BufferPool(4, keep=2, idle=0.2)
    await s3.put("first", body(12 * MiB), WriteSpec())
    assert pool.spare == 2  # kept for the next parts
    kept = list(pool._spare)
    part = await pool.reserve(s3.part_size)
    assert any(part.memory is memory for memory in kept)  # reused, not allocated anew
    part.release()
    deadline = asyncio.get_running_loop().time() + 10
    while pool.spare and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert pool.spare == 0  # nobody needed one for `idle` seconds


async def test_the_sweep_spares_uploads_this_process_is_sending(
    s3: S3Storage, moto: MotoServer
) -> None:
    started = asyncio.Event()
    resume = asyncio.Event()

    async def paused_body() -> AsyncIterator[bytes]:
        yield os.urandom(6 * MiB)  # a first part goes out: the multipart upload exists
        started.set()
        await resume.wait()
        yield os.urandom(MiB)

    task = asyncio.create_task(s3.put("in-flight", paused_body(), WriteSpec()))
    await started.wait()
    deadline = time.monotonic() + 20
    while not open_uploads(moto, s3.bucket):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await s3.sweep(older_than=timedelta(seconds=-5))  # every upload counts as old
    assert [u["Key"] for u in open_uploads(moto, s3.bucket)] == ["in-flight"]
    resume.set()
    assert (await task).size == 7 * MiB
    assert open_uploads(moto, s3.bucket) == []


async def test_the_sweeps_lease_does_not_make_an_expired_upload_look_fresh(
    s3: S3Storage, moto: MotoServer
) -> None:
    """The sweep takes an expired upload's lease before removing it; that write must keep
    the upload's age, or a PATCH arriving meanwhile finds it fresh and locked (423) instead
    of gone (410)."""
    from gateway.storage.s3_uploads import _Lease

    uploads = s3.resumable
    spec = UploadSpec(uuid.uuid4().hex, "aged", 10, {}, "application/octet-stream", None)
    state = await uploads.create(spec)
    record, etag = await uploads._read_state(state.id)
    aged = {**record, "touched": record["touched"] - 3600}
    await uploads._write_state(aged, if_match=etag, touch=False)
    record, etag = await uploads._read_state(state.id)
    assert record["touched"] == aged["touched"]
    await _Lease(uploads, record, etag, touch=False).take()  # as the sweep does
    record, _ = await uploads._read_state(state.id)
    assert record["touched"] == aged["touched"] and record["lease"]
    await uploads._write_state(record, touch=True)  # a request's write starts it anew
    record, _ = await uploads._read_state(state.id)
    assert record["touched"] > aged["touched"] + 3000
