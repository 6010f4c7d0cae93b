"""Fixtures: the app in-process (httpx ASGITransport) and a real server on loopback."""

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import Settings
from gateway.storage import open_storage
from gateway.storage.base import Storage
from gateway.testing import RunningGateway, running_gateway


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", max_upload_bytes=64 * 1024 * 1024)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c


@pytest.fixture
def live(tmp_path: Path) -> Iterator[RunningGateway]:
    """A real `gateway serve` process on the local backend, objects of at most 64 MiB."""
    with running_gateway(
        data_dir=tmp_path / "data", env={"GATEWAY_MAX_UPLOAD_BYTES": "64MiB"}
    ) as gateway:
        yield gateway


def tmp_files(data_dir: Path) -> list[str]:
    return sorted(os.listdir(data_dir / "tmp"))


def blob_files(data_dir: Path) -> list[Path]:
    return sorted(path for path in (data_dir / "blobs").rglob("*") if path.is_file())


@pytest.fixture(params=["local"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """Each backend in turn, empty, opened and closed around the test."""
    backend = open_storage(Settings(backend=request.param, data_dir=tmp_path / "data"))
    async with backend:
        yield backend
