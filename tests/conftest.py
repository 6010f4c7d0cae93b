"""Fixtures: the app in-process (httpx ASGITransport) and a real server on loopback."""

import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
from fastapi import FastAPI

from gateway.app import create_app
from gateway.settings import Settings
from gateway.storage import open_storage
from gateway.storage.base import Storage
from gateway.testing import (
    MOTO_CREDENTIALS,
    MotoServer,
    RunningGateway,
    moto_server,
    running_gateway,
)

# The same examples on every run, so that a run fails only on a change, never on a new
# draw; `HYPOTHESIS_PROFILE=explore` (with FUZZ_EXAMPLES for the bad-input fuzz) draws
# new ones to look for bugs.
hypothesis.settings.register_profile("repeatable", derandomize=True)
hypothesis.settings.register_profile("explore", derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(params=["local", "s3"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The in-process app's settings, on each backend in turn (objects of at most 64 MiB)."""
    limit = 64 * 1024 * 1024
    if request.param == "s3":
        moto = request.getfixturevalue("moto")
        return s3_settings(moto, s3_part_size="5MiB", max_upload_bytes=limit)
    return Settings(data_dir=tmp_path / "data", max_upload_bytes=limit)


def leftovers(settings: Settings) -> list[str]:
    """What unfinished uploads left behind: tmp files and resumable-upload data, or open S3
    multipart uploads and resumable-upload tails. (A finished resumable upload keeps only
    its small state record until it expires, so that its HEAD still answers.)"""
    if settings.backend == "local":
        uploads = settings.data_dir / "uploads"
        data = sorted(path.name for path in uploads.glob("*.bin")) if uploads.exists() else []
        return tmp_files(settings.data_dir) + data
    import boto3

    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1")
    uploads = s3.list_multipart_uploads(Bucket=settings.s3_bucket).get("Uploads", [])
    listing = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=".gateway/")
    tails = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith("/tail")]
    return [upload["Key"] for upload in uploads] + tails


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


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    """One moto server for the session; tests take a fresh bucket each."""
    with moto_server() as server:
        yield server


def s3_settings(moto: MotoServer, **overrides: Any) -> Settings:
    for name, value in MOTO_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    return Settings(
        backend="s3",
        s3_bucket=moto.create_bucket(),
        s3_endpoint_url=moto.url,
        s3_region="us-east-1",
        s3_addressing_style="path",
        **overrides,
    )


@pytest.fixture(params=["local", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """Each backend in turn, empty, opened and closed around the test."""
    if request.param == "s3":
        settings = s3_settings(request.getfixturevalue("moto"), s3_part_size="5MiB")
    else:
        settings = Settings(data_dir=tmp_path / "data")
    backend = open_storage(settings)
    async with backend:
        yield backend


# --- access: tokens, presigned URLs -------------------------------------------------

SIGNING_KEY = "5c1f0e9a7b3d4e2f8a6b0c9d1e7f3a2b4c6d8e0f1a3b5c7d"
ALL_SCOPES = ["read", "write", "delete", "list"]
# name: (token, scopes, prefix); the odd ones are stored in the file as their SHA-256.
TOKENS: dict[str, tuple[str, list[str], str]] = {
    "admin": ("tok-admin-0a1b2c3d4e5f", ALL_SCOPES, ""),
    "a-all": ("tok-a-all-9f8e7d6c5b4a", ALL_SCOPES, "tenant-a/"),
    "a-read": ("tok-a-read-1234567890ab", ["read"], "tenant-a/"),
    "a-write": ("tok-a-write-fedcba098765", ["write"], "tenant-a/"),
    "a-delete": ("tok-a-delete-13579bdf2468", ["delete"], "tenant-a/"),
    "a-list": ("tok-a-list-2468ace13579", ["list"], "tenant-a/"),
    "report": ("tok-report-0f0e0d0c0b0a", ["read", "write"], "report-"),
}


def tokens_json(tokens: dict[str, tuple[str, list[str], str]]) -> str:
    entries = []
    for number, (token, scopes, prefix) in enumerate(tokens.values()):
        secret: dict[str, str] = (
            {"token_sha256": hashlib.sha256(token.encode()).hexdigest()}
            if number % 2
            else {"token": token}
        )
        entries.append({**secret, "scopes": scopes, "prefix": prefix})
    return json.dumps({"tokens": entries})


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name][0]}"}


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.json"
    path.write_text(tokens_json(TOKENS))
    return path


@pytest.fixture
def secured_settings(tmp_path: Path, tokens_file: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        max_upload_bytes=64 * 1024 * 1024,
        tokens_file=tokens_file,
        signing_key=SIGNING_KEY,
    )


@pytest.fixture
async def secured(secured_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a gateway with the TOKENS above and a signing key, in-process."""
    application = create_app(secured_settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            yield c
