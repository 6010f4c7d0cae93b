"""The HTTP protocol's zero-copy send (gateway.protocol): the bytes of a file, sent with
sendfile(2) to a real socket, or read and written when the socket cannot take them."""

import asyncio
import base64
import hashlib
import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from uvicorn.protocols.http.flow_control import FlowControl

from gateway import protocol
from gateway.errors import BackendError
from gateway.protocol import ZERO_COPY, _Cycle
from gateway.testing import RunningGateway
from tests.helpers import MiB, raw_request

pytestmark = pytest.mark.anyio


class _Transport(asyncio.Transport):
    """A transport over one end of a socket pair, as far as the cycle uses one: what it
    writes goes to the socket; `socket` None makes the cycle read and write instead."""

    def __init__(self, sock: socket.socket | None, queued: int = 0) -> None:
        super().__init__()
        self.sock, self.queued, self.written = sock, queued, bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def get_write_buffer_size(self) -> int:
        return self.queued

    def write(self, data: Any) -> None:
        if self.sock is not None and not self.queued:
            self.sock.setblocking(True)
            self.sock.sendall(data)
            self.sock.setblocking(False)
        else:
            self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _cycle(transport: _Transport, method: str = "GET") -> _Cycle:
    completed = threading.Event()
    cycle = _Cycle(
        scope={"method": method, "type": "http", "http_version": "1.1"},  # type: ignore[typeddict-item]
        transport=transport,
        flow=FlowControl(transport),
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test"),
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=True,
        on_response=completed.set,
    )
    cycle.completed = completed  # type: ignore[attr-defined]
    return cycle


async def _respond(cycle: _Cycle, path: Path, offset: int, count: int) -> dict[str, Any]:
    await cycle.send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(count).encode())],
        }
    )
    with path.open("rb") as file:
        message = {"type": ZERO_COPY, "file": file, "offset": offset, "count": count}
        await cycle.send(message)
    return message


def _read_all(sock: socket.socket, into: bytearray, size: int) -> None:
    sock.setblocking(True)
    while len(into) < size and (chunk := sock.recv(1 * MiB)):
        into += chunk


async def test_a_file_goes_out_through_the_socket_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(24 * MiB + 123)
    path = tmp_path / "object"
    path.write_bytes(data)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    # The client reads nothing until the send has filled the socket, given its thread
    # back and waits on the event loop for the socket to take more.
    waiting = threading.Event()
    wait_for_socket = protocol._writable

    async def writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
        waiting.set()
        await wait_for_socket(loop, fd)

    monkeypatch.setattr(protocol, "_writable", writable)
    received = bytearray()

    def read() -> None:
        if waiting.wait(10):
            _read_all(theirs, received, len(data) + 100)

    reader = threading.Thread(target=read)
    reader.start()
    cycle = _cycle(_Transport(ours))
    try:
        message = await asyncio.wait_for(_respond(cycle, path, 1000, len(data) - 1000), 30)
    finally:
        ours.close()
        reader.join(10)
        theirs.close()
    assert waiting.is_set()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert hashlib.sha256(body).digest() == hashlib.sha256(data[1000:]).digest()
    assert message["sent"] == len(data) - 1000
    assert cycle.response_complete and cycle.completed.is_set()  # type: ignore[attr-defined]


async def test_a_file_shorter_than_announced_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(b"x" * 1000)
    for sock in (socket.socketpair(), None):
        transport = _Transport(sock[0] if sock else None)
        if sock:
            sock[0].setblocking(False)
        cycle = _cycle(transport)
        with pytest.raises(BackendError, match="shorter"):
            await _respond(cycle, path, 0, 5000)
        assert not cycle.response_complete
        for end in sock or ():
            end.close()


async def test_without_a_plain_socket_the_file_is_read_and_written(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 5)
    path = tmp_path / "object"
    path.write_bytes(data)
    for transport in (_Transport(None), _Transport(socket.socket(), queued=10)):
        cycle = _cycle(transport)
        message = await _respond(cycle, path, 5, len(data) - 5)
        body = bytes(transport.written).partition(b"\r\n\r\n")[2]
        assert body == data[5:]
        assert message["sent"] == len(data) - 5
        assert cycle.response_complete
        if transport.sock is not None:
            transport.sock.close()


async def test_a_client_gone_ends_the_send_short(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(os.urandom(16 * MiB))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    transport = _Transport(ours)
    cycle = _cycle(transport)
    sending = asyncio.ensure_future(_respond(cycle, path, 0, 16 * MiB))
    # the client takes the response's head, then leaves
    await asyncio.get_running_loop().run_in_executor(None, theirs.recv, 10)
    theirs.close()
    message = await asyncio.wait_for(sending, 10)
    ours.close()
    assert message["sent"] < 16 * MiB
    assert transport.closed and not cycle.response_complete


async def test_head_sends_no_body(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(b"x" * 1000)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    cycle = _cycle(_Transport(ours), method="HEAD")
    await _respond(cycle, path, 0, 1000)
    ours.close()
    received = theirs.recv(65536)
    theirs.close()
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"\r\n\r\n")
    assert cycle.response_complete


def test_downloads_on_one_connection_one_after_another(live: RunningGateway) -> None:
    """Each response ends where its Content-Length says, so that the next one on the same
    connection is read right; ranges included."""
    data = os.urandom(9 * MiB + 7)
    httpx.put(f"{live.url}/objects/kept.bin", content=data, timeout=30)
    with httpx.Client(base_url=live.url, timeout=30) as client:
        for headers, expected in [
            ({}, data),
            ({"Range": "bytes=100-2000000"}, data[100:2000001]),
            ({"Range": "bytes=-7"}, data[-7:]),
            ({}, data),
        ]:
            response = client.get("/objects/kept.bin", headers=headers)
            assert response.content == expected
        assert client.get("/healthz").status_code == 200


def test_a_slow_reader_gets_every_byte(live: RunningGateway) -> None:
    data = os.urandom(16 * MiB)
    httpx.put(f"{live.url}/objects/slow.bin", content=data, timeout=30)
    sock = raw_request(live, b"GET /objects/slow.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(30)
    received = bytearray()
    while len(received) < len(data) + 200:
        chunk = sock.recv(256 * 1024)
        if not chunk:
            break
        received += chunk
        if len(received) < 2 * MiB:
            threading.Event().wait(0.05)  # a client slower than the server's socket
        if b"\r\n\r\n" in received and len(received.partition(b"\r\n\r\n")[2]) == len(data):
            break
    sock.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == data


# --- request bodies read into the app's buffers ------------------------------------------


def _responses(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """`count` responses with Content-Length bodies, read off one connection."""
    sock.settimeout(30)
    data, out = b"", list[tuple[bytes, bytes]]()
    while len(out) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end]
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            if len(data) >= head_end + 4 + length:
                out.append((head, data[head_end + 4 : head_end + 4 + length]))
                data = data[head_end + 4 + length :]
                continue
        chunk = sock.recv(1 * MiB)
        assert chunk, "the connection closed early"
        data += chunk
    return out


def test_pipelined_uploads_each_get_their_own_bytes(live: RunningGateway) -> None:
    """Bodies that go past the parser end exactly where their Content-Length says: the
    requests sent right behind them, in the same packets, are read as requests."""
    first, second = os.urandom(5 * MiB + 3), os.urandom(2 * MiB + 11)
    requests = b"".join(
        [
            b"PUT /objects/one.bin HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(first),
            first,
            b"PUT /objects/two.bin HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(second),
            second,
            b"GET /objects/one.bin HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
    )
    sock = raw_request(live, requests)
    try:
        (head1, body1), (head2, body2), (head3, body3) = _responses(sock, 3)
    finally:
        sock.close()
    assert head1.startswith(b"HTTP/1.1 201 ") and head2.startswith(b"HTTP/1.1 201 ")
    assert json.loads(body1)["sha256"] == hashlib.sha256(first).hexdigest()
    assert json.loads(body2)["sha256"] == hashlib.sha256(second).hexdigest()
    assert head3.startswith(b"HTTP/1.1 200 ") and body3 == first


def test_a_client_that_expects_100_continue_gets_it(live: RunningGateway) -> None:
    data = os.urandom(3 * MiB + 5)
    head = (
        b"PUT /objects/expect.bin HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(data)
    )
    sock = raw_request(live, head)
    try:
        sock.settimeout(30)
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += sock.recv(1)
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(data)
        ((final, _),) = _responses(sock, 1)
    finally:
        sock.close()
    assert final.startswith(b"HTTP/1.1 201 ")
    assert httpx.get(f"{live.url}/objects/expect.bin", timeout=30).content == data


def test_a_body_that_pauses_is_stored_whole(live: RunningGateway) -> None:
    """A client that stops partway (a buffer is handed on part-full after FILL_WAIT) and
    goes on later; and a chunked body, which the parser reads."""
    data = os.urandom(3 * MiB + 99)
    head = b"PUT /objects/paused.bin HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(data)
    sock = raw_request(live, head, data[: MiB + 5])
    try:
        threading.Event().wait(4 * protocol.FILL_WAIT)  # the pause is the case under test
        sock.sendall(data[MiB + 5 :])
        ((final, _),) = _responses(sock, 1)
    finally:
        sock.close()
    assert final.startswith(b"HTTP/1.1 201 ")

    def chunked() -> Any:
        yield data[:1000]
        yield data[1000:]

    response = httpx.put(f"{live.url}/objects/chunked.bin", content=chunked(), timeout=30)
    assert response.status_code == 201
    for key in ("paused.bin", "chunked.bin"):
        assert httpx.get(f"{live.url}/objects/{key}", timeout=30).content == data


def test_bytes_read_into_buffers_are_counted(live: RunningGateway) -> None:
    def received() -> float:
        page = httpx.get(f"{live.url}/metrics", timeout=30).text
        return next(
            float(line.split()[-1])
            for line in page.splitlines()
            if line.startswith("gateway_bytes_received_total ")
        )

    before = received()
    data = os.urandom(9 * MiB + 1)
    assert httpx.put(f"{live.url}/objects/counted.bin", content=data).status_code == 201
    assert received() - before == len(data)


def test_a_body_the_parser_cuts_short_is_refused(live: RunningGateway) -> None:
    """An Upgrade request's body is not read as one: the upload is refused with 400, not
    stored empty."""
    head = (
        b"PUT /objects/upgraded.bin HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: h2c\r\nContent-Length: 1000\r\n\r\n"
    )
    sock = raw_request(live, head, b"x" * 1000)
    try:
        ((final, body),) = _responses(sock, 1)
    finally:
        sock.close()
    assert final.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Length" in body
    assert httpx.get(f"{live.url}/objects/upgraded.bin").status_code == 404


def test_an_answer_before_100_continue_closes_the_connection(live: RunningGateway) -> None:
    """A client that waits for `100 Continue` and gets a final answer instead may still
    send its body, or its next request: the gateway says `Connection: close`, and closes."""
    httpx.put(f"{live.url}/objects/there.bin", content=b"kept", timeout=30)
    head = (
        b"PUT /objects/there.bin HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"If-None-Match: *\r\nContent-Length: 1000\r\n\r\n"
    )
    sock = raw_request(live, head)
    try:
        ((final, _),) = _responses(sock, 1)
        assert sock.recv(1024) == b""  # closed by the gateway
    finally:
        sock.close()
    assert final.startswith(b"HTTP/1.1 412 ")
    assert b"connection: close" in final.lower()
    assert b"100 Continue" not in final
    assert httpx.get(f"{live.url}/objects/there.bin", timeout=30).content == b"kept"


def test_checksums_are_verified_on_bodies_read_into_buffers(live: RunningGateway) -> None:
    """API.md's checksum lines on a real server, where bodies take the buffered path: a
    Content-MD5 or X-Checksum-SHA256 that does not match is 400 checksum-mismatch and
    stores nothing; a tus chunk whose Upload-Checksum does not match is 460 and is
    discarded."""
    data = os.urandom(3 * MiB + 17)
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    for header in ({"Content-MD5": wrong_md5}, {"X-Checksum-SHA256": "0" * 64}):
        refused = httpx.put(f"{live.url}/objects/checked.bin", content=data, headers=header)
        assert refused.status_code == 400 and refused.json()["code"] == "checksum-mismatch"
        assert httpx.get(f"{live.url}/objects/checked.bin").status_code == 404
    right = base64.b64encode(hashlib.md5(data).digest()).decode()
    stored = httpx.put(
        f"{live.url}/objects/checked.bin", content=data, headers={"Content-MD5": right}
    )
    assert stored.status_code == 201 and stored.json()["sha256"] == hashlib.sha256(data).hexdigest()

    tus = {"Tus-Resumable": "1.0.0"}
    created = httpx.post(f"{live.url}/uploads/", headers={**tus, "Upload-Length": str(len(data))})
    url = created.headers["location"]
    patch = {**tus, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    bad = "sha256 " + base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    answer = httpx.patch(url, content=data, headers={**patch, "Upload-Checksum": bad})
    assert answer.status_code == 460
    assert httpx.head(url, headers=tus).headers["upload-offset"] == "0"
    good = "sha256 " + base64.b64encode(hashlib.sha256(data).digest()).decode()
    answer = httpx.patch(url, content=data, headers={**patch, "Upload-Checksum": good})
    assert answer.status_code == 204 and answer.headers["upload-offset"] == str(len(data))
