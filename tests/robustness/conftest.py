"""Real gateways on each backend for the robustness suites, and what a failed request may
not leave behind: no object, no temporary file, no open multipart upload."""

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.testing import MotoServer, RunningGateway, running_gateway, s3_environment
from tests.conftest import tmp_files
from tests.helpers import wait_for

MiB = 1024 * 1024

# Short timeouts, so that the suites see them expire within seconds.
FAST_TIMEOUTS = {
    "GATEWAY_MAX_UPLOAD_BYTES": "64MiB",
    "GATEWAY_S3_PART_SIZE": "5MiB",
    "GATEWAY_HEADER_TIMEOUT": "2s",
    "GATEWAY_BODY_IDLE_TIMEOUT": "2s",
    "GATEWAY_S3_READ_TIMEOUT": "2s",
    "GATEWAY_S3_MAX_ATTEMPTS": "2",
}


@dataclass
class Served:
    """A `gateway serve` process on one backend, and a look behind its back at storage."""

    backend: str
    gateway: RunningGateway
    moto: MotoServer | None = None
    bucket: str = ""

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def port(self) -> int:
        return self.gateway.port

    def s3(self) -> Any:
        assert self.moto is not None
        return self.moto.s3()

    def leftovers(self) -> list[str]:
        """Temporary files, or open multipart uploads (the gateway's own included)."""
        if self.moto is None:
            return tmp_files(self.gateway.data_dir)
        uploads = self.s3().list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [upload["Key"] for upload in uploads]

    def stored_keys(self) -> list[str]:
        """The keys storage holds, read without the gateway."""
        if self.moto is None:
            index = self.gateway.data_dir / "index.sqlite3"
            with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True)) as db:
                return sorted(key.decode() for (key,) in db.execute("SELECT key FROM objects"))
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(entry["Key"] for page in pages for entry in page.get("Contents", []))

    def blob_count(self) -> int | None:
        if self.moto is not None:
            return None
        blobs = self.gateway.data_dir / "blobs"
        return sum(1 for path in blobs.rglob("*") if path.is_file())

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the gateway's /metrics (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        wanted = ",".join(f'{label}="{value}"' for label, value in sorted(labels.items()))
        pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "")
        found = re.search(rf"^{pattern} (\S+)$", text, re.MULTILINE)
        return float(found[1]) if found else 0.0

    def assert_clean(self, *keys: str) -> None:
        """Nothing of a failed upload is visible or left behind (once its cleanup ran)."""
        wait_for(lambda: self.leftovers() == [], timeout=30, what="no leftovers")
        stored = self.stored_keys()
        for key in keys:
            assert key not in stored, f"{key!r} was stored"
            assert httpx.get(f"{self.url}/objects/{key}", timeout=30).status_code == 404
        if self.moto is None:
            assert self.blob_count() == len(stored), "a blob without an object"

    def assert_serves(self) -> None:
        """A round trip works, without a restart."""
        data = os.urandom(6 * MiB + 17)  # past one part on S3
        with httpx.Client(base_url=self.url, timeout=60) as client:
            put = client.put("/objects/probe/after", content=data)
            assert put.status_code == 201, put.text
            assert client.get("/objects/probe/after").content == data
            assert client.delete("/objects/probe/after").status_code == 204


@contextlib.contextmanager
def serve(
    backend: str,
    data_dir: Path,
    moto: MotoServer | None,
    env: Mapping[str, str] | None = None,
    endpoint: str | None = None,
    bucket: str | None = None,
) -> Iterator[Served]:
    """A gateway on `backend`: a data folder, or `bucket` (else a fresh one) of `moto`,
    reached through `endpoint` (a fault proxy, say) when given."""
    environment = {**FAST_TIMEOUTS, **(env or {})}
    if backend == "local":
        with running_gateway(data_dir=data_dir, env=environment) as gateway:
            yield Served(backend, gateway)
        return
    assert moto is not None
    bucket = bucket or moto.create_bucket()
    environment = {**s3_environment(endpoint or moto.url, bucket), **environment}
    with running_gateway(data_dir=data_dir, env=environment) as gateway:
        yield Served(backend, gateway, moto, bucket)


@pytest.fixture(scope="module", params=["local", "s3"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A gateway on each backend in turn, shared by a module's tests; each test must leave
    it clean (`assert_clean`)."""
    moto = request.getfixturevalue("moto") if request.param == "s3" else None
    with serve(request.param, tmp_path_factory.mktemp("data"), moto) as gateway:
        yield gateway
