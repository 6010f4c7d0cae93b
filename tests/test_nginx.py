"""nginx with infra's configuration in front of two `gateway serve` processes that share
one store (a moto bucket, or one local data folder): large bodies stream through byte for
byte, requests go to both instances, and one resumable upload's chunks alternate between
them.
"""

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.testing import MotoServer, RunningGateway, running_gateway, s3_environment
from tests.conftest import tmp_files
from tests.helpers import MiB, file_chunks, random_file, wait_for
from tests.nginx import Nginx, running_nginx

GiB = 1024 * MiB


@pytest.fixture(params=["s3", "local"])
def instances(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[RunningGateway]]:
    """Two instances on one store: a bucket on moto, or one local data folder."""
    env: dict[str, str] = {}
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto")
        env = s3_environment(moto.url, moto.create_bucket())
    shared = tmp_path / "data"
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                running_gateway(data_dir=shared, env=env, args=["--log-level", "info"])
            )
            for _ in range(2)
        ]


@pytest.fixture
def nginx(instances: list[RunningGateway]) -> Iterator[Nginx]:
    with running_nginx([gateway.port for gateway in instances]) as proxy:
        yield proxy


def served_by(instances: list[RunningGateway], request_id: str) -> list[int]:
    """Which instances wrote an access-log line for `request_id`. The line is written as
    the response ends, which may be just after the client has it: wait for one."""

    def found() -> list[int]:
        return [
            number
            for number, gateway in enumerate(instances)
            if re.search(rf"gateway\.access: .* id={re.escape(request_id)}$", gateway.log(), re.M)
        ]

    wait_for(lambda: bool(found()), what=f"an access-log line with id={request_id}")
    return found()


def test_large_upload_and_download_through_nginx(
    instances: list[RunningGateway], nginx: Nginx, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # 1 GiB through nginx to the s3 backend; 256 MiB on the local one is enough to show
    # that the proxy buffers nothing (`make test-big` moves 1 GiB there too)
    s3 = request.node.callspec.params["instances"] == "s3"
    size = GiB if s3 or request.config.getoption("-m") == "big" else 256 * MiB
    source = tmp_path / "big.bin"
    digest = random_file(source, size)
    with httpx.Client(base_url=nginx.url, timeout=120) as client:
        put = client.put(
            "/objects/big.bin",
            content=file_chunks(source),
            headers={"X-Request-ID": "big-upload", "Content-Length": str(size)},
        )
        assert put.status_code == 201, put.text
        assert put.json()["sha256"] == digest and put.json()["size"] == size
        assert put.headers["x-request-id"] == "big-upload"

        received = 0
        with (
            source.open("rb") as expected,
            client.stream("GET", "/objects/big.bin", headers={"X-Request-ID": "big-get"}) as got,
        ):
            assert got.status_code == 200
            assert got.headers["content-length"] == str(size)
            for chunk in got.iter_raw():
                assert chunk == expected.read(len(chunk)), f"bytes differ after {received}"
                received += len(chunk)
        assert received == size
    assert len(served_by(instances, "big-upload")) == 1
    assert len(served_by(instances, "big-get")) == 1
    if not s3:
        assert tmp_files(instances[0].data_dir) == []


def test_requests_go_to_both_instances(instances: list[RunningGateway], nginx: Nginx) -> None:
    with httpx.Client(base_url=nginx.url, timeout=30) as client:
        for n in range(12):
            request_id = f"turn-{n}"
            response = client.put(
                f"/objects/turns/{n}", content=b"x" * n, headers={"X-Request-ID": request_id}
            )
            assert response.status_code == 201
            assert response.headers["x-request-id"] == request_id
        listing = client.get("/objects", params={"prefix": "turns/"}).json()
    assert len(listing["objects"]) == 12  # one folder, whichever instance stored them
    served = [served_by(instances, f"turn-{n}") for n in range(12)]
    assert all(len(where) == 1 for where in served), served
    counts = [sum(where == [number] for where in served) for number in range(2)]
    assert min(counts) >= 3, f"requests per instance: {counts}"


def test_nginx_passes_request_ids_and_client_addresses(
    instances: list[RunningGateway], nginx: Nginx
) -> None:
    # Without an X-Request-ID, nginx makes one up and the gateway keeps it.
    response = httpx.get(f"{nginx.url}/healthz")
    made_up = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made_up)
    assert len(served_by(instances, made_up)) == 1
    # The client's address comes through X-Forwarded-For (uvicorn trusts loopback proxies).
    response = httpx.get(
        f"{nginx.url}/healthz",
        headers={"X-Request-ID": "forwarded", "X-Forwarded-For": "203.0.113.9"},
    )
    [number] = served_by(instances, "forwarded")
    assert re.search(r"client=203\.0\.113\.9 id=forwarded$", instances[number].log(), re.M)


def test_metrics_are_not_served_through_nginx(nginx: Nginx) -> None:
    assert httpx.get(f"{nginx.url}/metrics").status_code == 404


def test_a_resumable_upload_alternates_between_instances(
    instances: list[RunningGateway], nginx: Nginx
) -> None:
    data = os.urandom(20 * MiB + 5)
    tus = {"Tus-Resumable": "1.0.0"}
    with httpx.Client(base_url=nginx.url, timeout=60) as client:
        created = client.post(
            "/uploads/",
            headers={**tus, "Upload-Length": str(len(data)), "Upload-Metadata": "key dHVzLWJpZw=="},
        )
        assert created.status_code == 201
        location = created.headers["location"]
        assert location.startswith(nginx.url)  # the URL the client used, not an instance's
        offset, turn = 0, 0
        while offset < len(data):
            chunk = data[offset : offset + 3 * MiB]
            response = client.patch(
                location,
                content=chunk,
                headers={
                    **tus,
                    "Upload-Offset": str(offset),
                    "X-Request-ID": f"patch-{turn}",
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            assert response.status_code == 204, response.text
            offset += len(chunk)
            turn += 1
        assert response.headers["x-object-key"] == "tus-big"
        assert client.get("/objects/tus-big").content == data
    served = [served_by(instances, f"patch-{n}") for n in range(turn)]
    assert all(len(where) == 1 for where in served), served
    assert {where[0] for where in served} == {0, 1}  # both instances took chunks
