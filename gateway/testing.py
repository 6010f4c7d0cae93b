"""Run a real gateway (and, for the s3 backend, a real moto server) in tests.

    from gateway.testing import running_gateway

    def test_roundtrip(tmp_path):
        with running_gateway(data_dir=tmp_path) as gw:
            httpx.put(f"{gw.url}/objects/hello.txt", content=b"hi").raise_for_status()

Each helper starts a process on a free loopback port, waits until it answers, and stops it
(SIGTERM, then SIGKILL) on the way out.
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
