"""Clients that break off, stall or crawl, against a real gateway on each backend.

Every phase of a request is cut: after the headers, in the middle of a raw body or of a
form part, between two form parts, in the middle of a download. And clients that send a
byte a second (slow loris), or stop sending, are closed by the documented timeouts
(HEADER_TIMEOUT and BODY_IDLE_TIMEOUT, 2 s here) with a 408, whatever the phase. After each,
nothing of the request is visible or left behind, and the gateway serves on.
"""

import os
import select
import socket
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.helpers import read_response, wait_for
from tests.robustness import tus
from tests.robustness.conftest import FAST_TIMEOUTS, MiB, Served
from tests.robustness.raw import (
    BOUNDARY,
    connect,
    file_part,
    form_head,
    put_head,
    reset,
    staged,
    uploading,
)

HEADER_TIMEOUT = float(FAST_TIMEOUTS["GATEWAY_HEADER_TIMEOUT"].removesuffix("s"))
BODY_IDLE_TIMEOUT = float(FAST_TIMEOUTS["GATEWAY_BODY_IDLE_TIMEOUT"].removesuffix("s"))
SLACK = 3.0  # a loaded machine's delay on top of a timeout


@pytest.fixture(autouse=True)
def clean_after(served: Served) -> Iterator[None]:
    yield
    wait_for(lambda: uploading(served) == 0, what="no upload in flight")
    served.assert_clean()
    served.assert_serves()


# --- clients that go away -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["raw", "form"])
def test_gone_after_the_headers(served: Served, kind: str) -> None:
    sock = connect(served)
    sock.sendall(put_head("headers-only", 20 * MiB) if kind == "raw" else form_head())
    wait_for(lambda: uploading(served) == 1, what="the upload to begin")
    reset(sock)
    served.assert_clean("headers-only")


@pytest.mark.parametrize("sent", [3 * MiB, 12 * MiB], ids=["one part", "multipart"])
def test_gone_mid_raw_body(served: Served, sent: int) -> None:
    sock = connect(served)
    sock.sendall(put_head("mid-body", 20 * MiB) + os.urandom(sent))
    if served.moto is not None and sent > 5 * MiB:
        wait_for(lambda: served.leftovers() != [], what="the multipart upload to start")
    else:
        wait_for(lambda: uploading(served) == 1, what="the upload to begin")
    reset(sock)
    served.assert_clean("mid-body")


def test_gone_mid_form_part(served: Served) -> None:
    sock = connect(served)
    sock.sendall(form_head() + file_part("mid-part.bin", os.urandom(7 * MiB)))
    wait_for(lambda: served.leftovers() != [], what="the part to be stored")
    reset(sock)
    served.assert_clean("mid-part.bin")


def test_gone_between_form_parts(served: Served) -> None:
    before = staged(served)
    sock = connect(served)
    first = file_part("first.bin", os.urandom(6 * MiB)) + b"\r\n"
    sock.sendall(form_head() + first + b"--" + BOUNDARY + b"\r\n")
    wait_for(lambda: staged(served) == before + 1, what="the first part to be staged")
    sock.close()  # a FIN this time
    served.assert_clean("first.bin")


def connections_to_storage(served: Served) -> int:
    """The gateway's open blob files, or its established connections to S3."""
    process = psutil.Process(served.gateway.process.pid)
    if served.moto is None:
        blobs = str(served.gateway.data_dir / "blobs")
        return sum(1 for f in process.open_files() if f.path.startswith(blobs))
    port = int(served.moto.url.rsplit(":", 1)[1])
    return sum(
        1
        for c in process.net_connections("tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def test_gone_mid_download(served: Served) -> None:
    data = os.urandom(24 * MiB)
    assert httpx.put(f"{served.url}/objects/long", content=data, timeout=60).status_code == 201
    idle = connections_to_storage(served)
    sockets = []
    for _ in range(8):
        sock = connect(served)
        sock.sendall(b"GET /objects/long HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sockets.append(sock)
    for sock in sockets:
        reset(sock)
    # every download's file, or S3 connection with an unread body, is let go
    wait_for(lambda: connections_to_storage(served) <= idle, what="storage to be let go")
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for _ in range(10):
            ranged = client.get("/objects/long", headers={"Range": "bytes=5-9"})
            assert ranged.status_code == 206 and ranged.content == data[5:10]
        assert client.delete("/objects/long").status_code == 204


# --- clients that stall or crawl --------------------------------------------------------


def trickle(sock: socket.socket, data: bytes, every: float, give_up: float) -> tuple[bytes, float]:
    """Send `data` a piece at a time (one byte, or `len(data)` bytes, each `every` seconds)
    until the gateway answers or closes; the answer and when it came."""
    started = time.monotonic()
    for byte in data:
        ready, _, _ = select.select([sock], [], [], every)
        if ready or time.monotonic() - started > give_up:
            break
        try:
            sock.send(bytes([byte]))
        except OSError:
            break
    return read_response(sock, timeout=give_up), time.monotonic() - started


def test_a_slow_loris_in_the_headers_is_closed(served: Served) -> None:
    sock = connect(served)
    answer, took = trickle(sock, put_head("loris", 10) + b"0123456789", 1.0, give_up=30)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ") and b"bad-request" in answer
    assert took < HEADER_TIMEOUT + SLACK


def test_connections_that_say_nothing_are_closed(served: Served) -> None:
    process = psutil.Process(served.gateway.process.pid)
    before = process.num_fds()
    started = time.monotonic()
    sockets = [connect(served) for _ in range(50)]
    for sock in sockets:
        assert read_response(sock, timeout=HEADER_TIMEOUT + SLACK).startswith(b"HTTP/1.1 408 ")
        sock.close()
    assert time.monotonic() - started < HEADER_TIMEOUT + SLACK
    wait_for(lambda: process.num_fds() <= before, what="their descriptors to be closed")


@pytest.mark.parametrize("kind", ["raw", "form"])
def test_a_slow_loris_in_the_body_is_closed(served: Served, kind: str) -> None:
    sock = connect(served)
    if kind == "raw":
        sock.sendall(put_head("loris-body", 1000))
    else:
        sock.sendall(form_head(1000) + file_part("loris.bin"))
    answer, took = trickle(sock, os.urandom(1000), 1.0, give_up=30)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"connection: close" in answer.lower() and b"bad-request" in answer
    assert took < BODY_IDLE_TIMEOUT + SLACK
    served.assert_clean("loris-body", "loris.bin")


def assert_closed_for_stalling(sock: socket.socket) -> None:
    """The client, silent since its last byte, gets a 408 within BODY_IDLE_TIMEOUT."""
    started = time.monotonic()
    answer = read_response(sock, timeout=BODY_IDLE_TIMEOUT + 2 * SLACK)
    took = time.monotonic() - started
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert took < BODY_IDLE_TIMEOUT + SLACK


@pytest.mark.parametrize("sent", [MiB, 7 * MiB], ids=["one part", "multipart"])
def test_a_stalled_body_is_closed(served: Served, sent: int) -> None:
    sock = connect(served)
    sock.sendall(put_head("stalled", 20 * MiB) + os.urandom(sent))
    assert_closed_for_stalling(sock)
    served.assert_clean("stalled")


def test_a_slow_but_steady_client_is_served(served: Served) -> None:
    """32 KiB/s, far above BODY_MIN_RATE (1 KiB/s), for longer than BODY_IDLE_TIMEOUT."""
    piece = os.urandom(8 * 1024)
    pieces = int(4 * BODY_IDLE_TIMEOUT)

    def slowly() -> Iterator[bytes]:
        for _ in range(pieces):
            time.sleep(0.25)
            yield piece

    response = httpx.put(f"{served.url}/objects/steady", content=slowly(), timeout=60)
    assert response.status_code == 201, response.text
    assert httpx.get(f"{served.url}/objects/steady").content == piece * pieces
    assert httpx.delete(f"{served.url}/objects/steady").status_code == 204


def test_a_client_below_the_minimum_rate_is_closed(served: Served) -> None:
    """Never idle for long, but 512 bytes a second, under BODY_MIN_RATE (1 KiB/s)."""
    sock = connect(served)
    sock.sendall(put_head("crawler", 100_000))
    started = time.monotonic()
    answer = b""
    while not answer and time.monotonic() - started < 30:
        ready, _, _ = select.select([sock], [], [], 0.5)
        if ready:
            answer = read_response(sock)
        else:
            sock.send(os.urandom(256))
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert time.monotonic() - started < BODY_IDLE_TIMEOUT + SLACK
    served.assert_clean("crawler")


def test_a_stalled_tus_patch_keeps_what_arrived(served: Served) -> None:
    data = os.urandom(3 * MiB)
    upload = tus.create(served.url, len(data), "tus-stalled")
    sock = connect(served)
    sock.sendall(
        f"PATCH {upload.removeprefix(served.url)} HTTP/1.1\r\nHost: x\r\n"
        f"Tus-Resumable: 1.0.0\r\nContent-Type: {tus.CHUNK}\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data[:MiB]
    )
    assert_closed_for_stalling(sock)
    assert tus.offset(upload) == MiB  # what arrived was kept, as for a client that left
    assert tus.resume(upload, data).status_code == 204
    assert httpx.get(f"{served.url}/objects/tus-stalled").content == data
    assert httpx.delete(f"{served.url}/objects/tus-stalled").status_code == 204


def test_a_body_left_unread_after_an_early_answer_cannot_hold_the_connection(
    served: Served,
) -> None:
    """Answered before its body was read (412 here), a request whose client then sends
    the rest a byte a second is closed once HEADER_TIMEOUT has passed: the bytes, dropped
    as they come, do not keep the connection open."""
    httpx.put(f"{served.url}/objects/taken", content=b"first")
    sock = connect(served)
    head = put_head("taken", 1000).replace(b"\r\n\r\n", b"\r\nIf-None-Match: *\r\n\r\n")
    sock.sendall(head + b"0123456789")
    sock.settimeout(30)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 412 ")
    started = time.monotonic()
    rest, took = trickle(sock, os.urandom(990), 1.0, give_up=30)
    sock.close()
    assert took < HEADER_TIMEOUT + SLACK, (rest[:200], time.monotonic() - started)
    assert httpx.get(f"{served.url}/objects/taken").content == b"first"
