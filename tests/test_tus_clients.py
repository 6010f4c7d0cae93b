"""Resumable uploads driven by real tus clients against real gateway processes: tuspy, and
tus-js-client under Node; on s3, two gateway instances sharing one bucket."""

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tusclient import client as tuspy
from tusclient.storage.filestorage import FileStorage

from gateway.testing import MotoServer, RunningGateway, running_gateway, s3_environment

MiB = 1024 * 1024
JS = Path(__file__).parent / "js"
TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(params=["local", "s3"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningGateway]:
    """A real gateway process on each backend (5 MiB S3 parts, so that uploads have several)."""
    env = {"GATEWAY_S3_PART_SIZE": "5MiB"}
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto")
        env |= s3_environment(moto.url, moto.create_bucket())
    with running_gateway(data_dir=tmp_path / "data", env=env) as gw:
        yield gw


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def stored(gw: RunningGateway, key: str) -> bytes:
    response = httpx.get(f"{gw.url}/objects/{key}", timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-checksum-sha256"] == hashlib.sha256(response.content).hexdigest()
    return response.content


# --- tus-js-client ---------------------------------------------------------------------------


def node_upload(gw: RunningGateway, path: Path, storage: Path, *extra: str) -> tuple[int, list]:
    if shutil.which("node") is None or not (JS / "node_modules" / "tus-js-client").exists():
        pytest.fail("tus-js-client is not installed: run `make test` (it runs npm ci)")
    result = subprocess.run(
        [
            "node",
            str(JS / "upload.mjs"),
            "--endpoint",
            f"{gw.url}/uploads/",
            "--file",
            str(path),
            "--storage",
            str(storage),
            "--chunk-size",
            str(3 * MiB),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.returncode, events


def test_tus_js_client_resumes_an_interrupted_upload(
    gateway: RunningGateway, tmp_path: Path
) -> None:
    source = tmp_path / "film.bin"
    data = random_file(source, 17 * MiB + 3)
    storage = tmp_path / "urls.json"
    code, events = node_upload(gateway, source, storage, "--abort-after", str(7 * MiB))
    assert code == 3 and events[-1]["event"] == "aborted", events
    url = json.loads(storage.read_text()).popitem()[1]["uploadUrl"]
    offset = int(httpx.head(url, headers=TUS).headers["upload-offset"])
    assert 0 < offset < len(data)
    code, events = node_upload(gateway, source, storage)  # a new client, a new process
    assert code == 0, events
    assert [e["event"] for e in events] == ["resuming", "done"] and events[0]["url"] == url
    assert stored(gateway, "film.bin") == data
    assert httpx.head(url, headers=TUS).headers["x-object-key"] == "film.bin"


# --- tuspy -------------------------------------------------------------------------------------


def test_tuspy_resumes_an_interrupted_upload(gateway: RunningGateway, tmp_path: Path) -> None:
    source = tmp_path / "report.pdf"
    data = random_file(source, 13 * MiB + 11)
    urls = FileStorage(str(tmp_path / "tuspy.json"))
    first = tuspy.TusClient(f"{gateway.url}/uploads/").uploader(
        str(source),
        chunk_size=2 * MiB,
        metadata={"filename": "report.pdf", "prefix": "docs/"},
        store_url=True,
        url_storage=urls,
    )
    for _ in range(3):  # three chunks, then the client is gone
        first.upload_chunk()
    assert first.offset == 6 * MiB
    second = tuspy.TusClient(f"{gateway.url}/uploads/").uploader(
        str(source),
        chunk_size=4 * MiB,
        metadata={"filename": "report.pdf", "prefix": "docs/"},
        store_url=True,
        url_storage=urls,
    )
    assert second.url == first.url and second.offset == 6 * MiB  # found and resumed
    second.upload()
    assert stored(gateway, "docs/report.pdf") == data


def test_tuspy_with_checksums(gateway: RunningGateway, tmp_path: Path) -> None:
    source = tmp_path / "summed.bin"
    data = random_file(source, 6 * MiB)
    uploader = tuspy.TusClient(f"{gateway.url}/uploads/").uploader(
        str(source), chunk_size=MiB, metadata={"key": "summed"}, upload_checksum=True
    )
    uploader.upload()
    assert stored(gateway, "summed") == data


# --- two instances, one bucket -------------------------------------------------------------------


@pytest.fixture
def two_instances(moto: MotoServer, tmp_path: Path) -> Iterator[tuple[RunningGateway, ...]]:
    env = {**s3_environment(moto.url, moto.create_bucket()), "GATEWAY_S3_PART_SIZE": "5MiB"}
    with (
        running_gateway(data_dir=tmp_path / "a", env=env) as a,
        running_gateway(data_dir=tmp_path / "b", env=env) as b,
    ):
        yield a, b


def test_chunks_alternate_between_two_instances(two_instances: tuple[RunningGateway, ...]) -> None:
    a, b = two_instances
    data = os.urandom(23 * MiB + 7)
    created = httpx.post(
        f"{a.url}/uploads/",
        headers={**TUS, "Upload-Length": str(len(data)), "Upload-Metadata": "key YWx0ZXJuYXRl"},
    )
    path = "/uploads/" + created.headers["location"].rsplit("/", 1)[1]
    offset = 0
    for turn, size in enumerate((3 * MiB, 4 * MiB, 1, 6 * MiB - 1, 2 * MiB, 5 * MiB, len(data))):
        instance = (a, b)[turn % 2]
        head = httpx.head(instance.url + path, headers=TUS)  # each instance sees the state
        assert int(head.headers["upload-offset"]) == offset
        chunk = data[offset : offset + size]
        response = httpx.patch(
            instance.url + path,
            content=chunk,
            timeout=60,
            headers={
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert response.status_code == 204, response.text
        offset += len(chunk)
        assert int(response.headers["upload-offset"]) == offset
        if offset == len(data):
            break
    assert response.headers["x-object-key"] == "alternate"
    for instance in (a, b):
        assert stored(instance, "alternate") == data
        assert httpx.head(instance.url + path, headers=TUS).headers["x-object-key"] == "alternate"


def test_two_instances_never_append_at_once(two_instances: tuple[RunningGateway, ...]) -> None:
    a, b = two_instances
    created = httpx.post(
        f"{a.url}/uploads/",
        headers={**TUS, "Upload-Length": str(40 * MiB), "Upload-Metadata": "key Y29udGVuZGVk"},
    )
    path = "/uploads/" + created.headers["location"].rsplit("/", 1)[1]
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}

    def slow_body() -> Iterator[bytes]:
        for n in range(20):
            yield os.urandom(MiB)
            if n == 1:  # the first PATCH holds the upload: now the other instance is asked
                second = httpx.patch(b.url + path, content=b"x" * 100, headers=headers)
                results.append(second.status_code)

    results: list[int] = []
    first = httpx.patch(a.url + path, content=slow_body(), headers=headers, timeout=60)
    assert first.status_code == 204 and results in ([423], [409])
    assert httpx.head(b.url + path, headers=TUS).headers["upload-offset"] == str(20 * MiB)
