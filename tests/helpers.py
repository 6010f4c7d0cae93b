"""Helpers shared by the tests that run real processes."""

import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.testing import RunningGateway

MiB = 1024 * 1024


def wait_for(condition: Callable[[], bool], timeout: float = 15, what: str = "") -> None:
    """Poll until `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def random_file(path: Path, size: int) -> str:
    """Write `size` random bytes (a whole number of MiB) to `path`; their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def file_chunks(path: Path, size: int = MiB) -> Iterator[bytes]:
    with path.open("rb") as source:
        while block := source.read(size):
            yield block


def raw_request(gw: RunningGateway, head: bytes, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port))
    sock.sendall(head + body)
    return sock


def read_response(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data
