"""The gateway process killed (SIGKILL) with uploads of every kind in flight, then started
again on the same data folder or bucket; and the local disk filling up.

What was answered 201 before the crash reads back byte for byte; what was in flight is not
visible (an object being replaced keeps its old version); what the crash left behind (temp
files, open multipart uploads) is swept at the next start.
"""

import errno
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import GatewayError
from gateway.settings import Settings
from gateway.storage.base import WriteSpec
from gateway.storage.local import LocalStorage
from gateway.testing import MotoServer
from tests.conftest import tmp_files
from tests.helpers import wait_for
from tests.robustness import tus
from tests.robustness.conftest import MiB, Served, serve
from tests.robustness.raw import file_part, form_head, put_head, staged


def in_flight(served: Served) -> list[socket.socket]:
    """Start four uploads and leave them unfinished: a one-part raw body, a multipart raw
    body, a new version of `kept`, and a form whose first file is staged."""
    sockets = []
    before = staged(served)
    for key, sent in [("cut-small", MiB), ("cut-large", 12 * MiB), ("kept", 7 * MiB)]:
        sock = socket.create_connection(("127.0.0.1", served.port))
        sock.sendall(put_head(key, 30 * MiB) + os.urandom(sent))
        sockets.append(sock)
    sock = socket.create_connection(("127.0.0.1", served.port))
    first = file_part("staged.bin", os.urandom(6 * MiB)) + b"\r\n"
    sock.sendall(form_head() + first + file_part("partial.bin", os.urandom(MiB)))
    sockets.append(sock)
    wait_for(lambda: staged(served) >= before + 1, what="the form's first file to be staged")
    wait_for(
        lambda: served.metric("gateway_uploads_in_progress") == 4, what="four uploads in flight"
    )
    if served.moto is not None:  # the three multipart uploads have begun
        wait_for(lambda: len(served.leftovers()) == 3, what="the multipart uploads to start")
    return sockets


def kill(served: Served) -> None:
    served.gateway.process.send_signal(signal.SIGKILL)
    served.gateway.process.wait()


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, MotoServer | None]]:
    yield request.param, request.getfixturevalue("moto") if request.param == "s3" else None


def test_kill_9_mid_uploads_then_restart(
    backend: tuple[str, MotoServer | None], tmp_path: Path
) -> None:
    name, moto = backend
    durable = {f"done/{n}": os.urandom(n * 3 * MiB + n) for n in range(4)}
    durable["kept"] = os.urandom(2 * MiB)
    with serve(name, tmp_path, moto) as served:
        bucket = served.bucket
        for key, data in durable.items():
            assert httpx.put(f"{served.url}/objects/{key}", content=data).status_code == 201
        sockets = in_flight(served)
        kill(served)
        for sock in sockets:
            sock.close()
        left = served.leftovers()
    assert len(left) == (5 if name == "local" else 3)  # what the crash left behind
    with serve(name, tmp_path, moto, bucket=bucket or None) as served:
        assert served.leftovers() == []  # swept at start
        assert served.stored_keys() == sorted(durable)
        listing = httpx.get(f"{served.url}/objects").json()["objects"]
        assert sorted(item["key"] for item in listing) == sorted(durable)
        for key, data in durable.items():
            assert httpx.get(f"{served.url}/objects/{key}", timeout=30).content == data
        served.assert_clean("cut-small", "cut-large", "staged.bin", "partial.bin")
        served.assert_serves()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB file system of its own (tmpfs; needs root, as CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_the_upload_and_passes(small_disk: Path) -> None:
    with serve("local", small_disk / "data", None) as served:
        filler = os.urandom(14 * MiB)
        assert httpx.put(f"{served.url}/objects/filler", content=filler).status_code == 201
        attempts: list[tuple[str, str, dict[str, Any]]] = [
            ("PUT", "/objects/too-big", {"content": os.urandom(12 * MiB)}),
            ("POST", "/objects", {"files": {"file": ("too-big", os.urandom(12 * MiB))}}),
        ]
        for method, path, extra in attempts:
            response = httpx.request(method, served.url + path, timeout=60, **extra)
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "backend-unavailable"
            assert str(small_disk) not in response.text
            served.assert_clean("too-big")
        assert "unhandled error" not in served.gateway.log()
        # room is made: the same process stores again
        assert httpx.delete(f"{served.url}/objects/filler").status_code == 204
        again = os.urandom(12 * MiB)
        assert httpx.put(f"{served.url}/objects/too-big", content=again).status_code == 201
        assert httpx.get(f"{served.url}/objects/too-big").content == again
        assert served.leftovers() == []


@pytest.mark.parametrize(
    ("failing", "error", "status"),
    [
        ("fsync", errno.EIO, 502),
        ("fsync", errno.ENOSPC, 503),
        ("open", errno.EMFILE, 502),
    ],
)
async def test_a_failing_disk_call_is_a_backend_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, error: int, status: int
) -> None:
    """The disk refusing a file or its fsync (an I/O error, no room, no descriptors left) is
    a clear 5xx, and the temp file goes."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(error, os.strerror(error))

    async with LocalStorage(tmp_path) as storage:

        async def body() -> AsyncIterator[bytes]:
            yield b"some bytes"

        monkeypatch.setattr(os, failing, refuse)
        with pytest.raises(GatewayError) as raised:
            await storage.put("k", body(), WriteSpec())
        monkeypatch.undo()
        assert raised.value.status == status
        assert tmp_files(tmp_path) == [] and await storage.index.get("k") is None


def test_kill_9_mid_tus_patch_then_resume(
    backend: tuple[str, MotoServer | None], tmp_path: Path
) -> None:
    """A tus upload outlives the process: after kill -9 and a restart, HEAD gives an offset
    at least what was acknowledged and at most what was sent, and the upload resumes."""
    name, moto = backend
    data = os.urandom(20 * MiB + 3)
    acknowledged, sent = 7 * MiB, 13 * MiB
    with serve(name, tmp_path, moto) as served:
        bucket = served.bucket
        upload = tus.create(served.url, len(data), "resumed.bin")
        assert tus.patch(upload, 0, data[:acknowledged]).status_code == 204
        path = upload.removeprefix(served.url)
        sock = socket.create_connection(("127.0.0.1", served.port))
        sock.sendall(
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: {tus.CHUNK}\r\nUpload-Offset: {acknowledged}\r\n"
            f"Content-Length: {len(data) - acknowledged}\r\n\r\n".encode()
            + data[acknowledged:sent]
        )
        wait_for(
            lambda: served.metric("gateway_bytes_received_total") >= sent - 8 * MiB,
            what="the gateway to take the bytes",
        )
        kill(served)
        sock.close()
    with serve(name, tmp_path, moto, bucket=bucket or None) as served:
        upload = served.url + path
        assert acknowledged <= tus.offset(upload) <= sent
        assert httpx.get(f"{served.url}/objects/resumed.bin").status_code == 404
        # on S3 the dead process's lease on the upload runs out first (423 until then)
        answers: list[int] = []

        def resumed() -> bool:
            answers.append(tus.resume(upload, data).status_code)
            return answers[-1] != 423

        wait_for(resumed, timeout=45, what="the upload to be free again")
        assert answers[-1] == 204
        assert httpx.get(f"{served.url}/objects/resumed.bin", timeout=30).content == data
        served.assert_clean()


def test_idle_connections_are_kept_for_the_keep_alive_timeout(tmp_path: Path) -> None:
    """uvicorn's 5 s, as short as httpx's own idle timeout, made the soak's clients send on
    connections the gateway was closing; KEEP_ALIVE_TIMEOUT (75 s) reaches uvicorn."""
    assert Settings().keep_alive_timeout.total_seconds() > 60  # nginx keeps them 60 s
    with serve("local", tmp_path, None, {"GATEWAY_KEEP_ALIVE_TIMEOUT": "2s"}) as gw:
        sock = socket.create_connection(("127.0.0.1", gw.port))
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(request)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        head, _, body = answer.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        while len(body) < length:  # the body may come in a segment of its own
            body += sock.recv(65536)
        started = time.monotonic()
        ready, _, _ = select.select([sock], [], [], 1.0)
        assert not ready  # still open after a second
        assert sock.recv(1, socket.MSG_PEEK) == b""  # closed by the gateway (blocks till then)
        assert 1.0 <= time.monotonic() - started < 5
        sock.close()
