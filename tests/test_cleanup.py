"""`gateway cleanup`: what the server sweeps at start and periodically, once, from cron."""

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.testing import MotoServer, RunningGateway, running_gateway, s3_environment

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(params=["local", "s3"])
def setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[RunningGateway, dict[str, str]]]:
    env = {"GATEWAY_UPLOAD_EXPIRY": "1h", "GATEWAY_S3_PART_SIZE": "5MiB"}
    if request.param == "s3":
        moto: MotoServer = request.getfixturevalue("moto")
        env |= s3_environment(moto.url, moto.create_bucket())
    with running_gateway(data_dir=tmp_path / "data", env=env) as gw:
        yield gw, env


def age(gw: RunningGateway, env: dict[str, str], upload_id: str) -> None:
    """Make an upload look untouched since 1970."""
    if env.get("GATEWAY_BACKEND") == "s3":
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=env["GATEWAY_S3_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        key = f".gateway/uploads/{upload_id}/state"
        state = json.loads(s3.get_object(Bucket=env["GATEWAY_S3_BUCKET"], Key=key)["Body"].read())
        s3.put_object(
            Bucket=env["GATEWAY_S3_BUCKET"], Key=key, Body=json.dumps({**state, "touched": 0})
        )
    else:
        for path in (gw.data_dir / "uploads").glob(f"{upload_id}.*"):
            os.utime(path, (0, 0))


def test_cleanup_removes_expired_uploads(setup: tuple[RunningGateway, dict[str, str]]) -> None:
    gw, env = setup
    urls = []
    for key in ("old", "fresh"):
        created = httpx.post(
            f"{gw.url}/uploads/",
            headers={
                **TUS,
                "Upload-Length": str(12 * 1024 * 1024),
                "Upload-Metadata": "key " + base64.b64encode(key.encode()).decode(),
            },
        )
        url = created.headers["location"]
        patched = httpx.patch(
            url,
            content=os.urandom(7 * 1024 * 1024),
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        assert patched.status_code == 204
        urls.append(url)
    age(gw, env, urls[0].rsplit("/", 1)[1])
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "cleanup", "--data-dir", str(gw.data_dir)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "removed 1 expired" in result.stdout
    assert httpx.head(urls[0], headers=TUS).status_code == 404
    assert httpx.head(urls[1], headers=TUS).headers["upload-offset"] == str(7 * 1024 * 1024)
