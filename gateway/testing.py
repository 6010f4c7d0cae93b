"""Run a real gateway (and, for the s3 backend, a real moto server) in tests.

    def test_upload(moto_gateway):          # a pytest fixture, registered by the package
        response = httpx.put(f"{moto_gateway.url}/objects/a.txt", content=b"hi")
        assert response.status_code == 201
        s3 = moto_gateway.s3()                # a boto3 client on the same moto server
        assert s3.get_object(Bucket=moto_gateway.bucket, Key="a.txt")["Body"].read() == b"hi"

Outside pytest: `with gateway_on_moto() as gw: ...`, `with moto_server() as moto: ...`,
or `with running_gateway(data_dir=path) as gw: ...` for the local backend. Each helper
starts its process on a free loopback port, waits until it answers, and stops it (SIGTERM,
then SIGKILL) on the way out. Needs the `testing` extra (moto[server], boto3, httpx).
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Poll `url` until it answers 2xx; raise if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process exited with code {process.returncode}")
        try:
            with _DIRECT.open(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout:g}s")


def stop(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class RunningGateway:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_gateway(
    *,
    data_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    ready_path: str = "/readyz",
) -> Iterator[RunningGateway]:
    """`gateway serve` in a subprocess on a free loopback port (the local backend unless
    `env` or `args` say otherwise)."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gw-")))
        port = free_port()
        log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gw-log-")))
        log_path = log_dir / "gateway.log"
        command = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
            *args,
        ]
        environment = {**os.environ, **(env or {})}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, env=environment, stdout=log, stderr=subprocess.STDOUT
            )
        stack.callback(stop, process)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(url + ready_path, process)
        except Exception as exc:
            raise RuntimeError(f"gateway did not start: {exc}\n{log_path.read_text()}") from exc
        yield RunningGateway(url, port, process, data_dir, log_path)


MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class MotoServer:
    url: str
    process: subprocess.Popen[bytes]

    def s3(self) -> Any:
        """A boto3 S3 client on this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=MOTO_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=MOTO_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, name: str | None = None) -> str:
        bucket = name or f"gateway-{uuid.uuid4().hex[:12]}"
        self.s3().create_bucket(Bucket=bucket)
        return bucket


@contextlib.contextmanager
def moto_server() -> Iterator[MotoServer]:
    """moto's S3 in server mode, in a subprocess on a free loopback port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **MOTO_CREDENTIALS},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url + "/moto-api/", process)
        yield MotoServer(url, process)
    finally:
        stop(process)


@dataclass
class MotoGateway:
    """A gateway on the s3 backend, its moto server and its bucket."""

    url: str
    gateway: RunningGateway
    moto: MotoServer
    bucket: str

    def s3(self) -> Any:
        return self.moto.s3()


def s3_environment(moto_url: str, bucket: str) -> dict[str, str]:
    return {
        **MOTO_CREDENTIALS,
        "GATEWAY_BACKEND": "s3",
        "GATEWAY_S3_BUCKET": bucket,
        "GATEWAY_S3_ENDPOINT_URL": moto_url,
        "GATEWAY_S3_REGION": "us-east-1",
        "GATEWAY_S3_ADDRESSING_STYLE": "path",
    }


@contextlib.contextmanager
def gateway_on_moto(
    *, env: Mapping[str, str] | None = None, args: Sequence[str] = ()
) -> Iterator[MotoGateway]:
    """A moto server with a fresh bucket, and a gateway on it."""
    with moto_server() as moto:
        bucket = moto.create_bucket()
        environment = {**s3_environment(moto.url, bucket), **(env or {})}
        with running_gateway(env=environment, args=args) as gateway:
            yield MotoGateway(gateway.url, gateway, moto, bucket)


try:
    import pytest
except ImportError:  # pragma: no cover - the fixture is only for pytest users
    pass
else:

    @pytest.fixture
    def moto_gateway() -> Iterator[MotoGateway]:
        """A gateway on the s3 backend over its own moto server and bucket."""
        with gateway_on_moto() as gateway:
            yield gateway
