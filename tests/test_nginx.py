"""nginx with infra's configuration in front of two `gateway serve` processes that share one
data folder: large bodies stream through byte for byte, and requests go to both instances.

The instances run the local backend on one folder. To run them on the s3 backend instead,
only `instances` changes: start a moto server and give both the same bucket.
"""

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.testing import RunningGateway, running_gateway
from tests.conftest import tmp_files
from tests.helpers import MiB, file_chunks, random_file, wait_for
from tests.nginx import Nginx, running_nginx

GiB = 1024 * MiB


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[list[RunningGateway]]:
    shared = tmp_path / "data"
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(running_gateway(data_dir=shared, args=["--log-level", "info"]))
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


@pytest.mark.parametrize(
    "size", [256 * MiB, pytest.param(GiB, marks=pytest.mark.big)], ids=["256MiB", "1GiB"]
)
def test_large_upload_and_download_through_nginx(
    instances: list[RunningGateway], nginx: Nginx, tmp_path: Path, size: int
) -> None:
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
