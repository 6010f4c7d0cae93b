"""A real `gateway serve` on loopback: streaming, large bodies, disconnects and crashes."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from gateway.testing import RunningGateway, running_gateway
from tests.conftest import blob_files, tmp_files
from tests.helpers import MiB, file_chunks, random_file, raw_request, read_response, wait_for


def open_blob_fds(gw: RunningGateway) -> list[str]:
    fds = Path(f"/proc/{gw.process.pid}/fd")
    targets = []
    for fd in fds.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    inside = [
        Path(t).relative_to(gw.data_dir) for t in targets if Path(t).is_relative_to(gw.data_dir)
    ]
    return [str(path) for path in inside if path.parts[0] in ("blobs", "tmp")]


def test_large_raw_and_form_uploads_round_trip(live: RunningGateway, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    digest = random_file(source, 48 * MiB)
    with httpx.Client(base_url=live.url, timeout=60) as client:
        put = client.put("/objects/raw.bin", content=file_chunks(source))
        assert put.status_code == 201 and put.json()["sha256"] == digest
        with source.open("rb") as handle:
            posted = client.post("/upload/", files={"file": ("form.bin", handle)})
        assert posted.status_code == 200 and posted.json()["object"]["sha256"] == digest
        for url in ("/objects/raw.bin", "/download/form.bin"):
            hasher = hashlib.sha256()
            with client.stream("GET", url) as response:
                assert response.status_code == 200
                sizes = []
                for chunk in response.iter_raw():
                    hasher.update(chunk)
                    sizes.append(len(chunk))
            assert hasher.hexdigest() == digest
    assert tmp_files(live.data_dir) == []


def test_form_delimiters_across_the_edges_of_the_read_buffers(live: RunningGateway) -> None:
    """A form body is read into buffers of 64 KiB, then 1 MiB (gateway.intake): files whose
    delimiters begin just before the edges between those buffers, so that the parser finds
    each across two of them, are stored byte for byte."""
    boundary = "edge-boundary-7MA4YWxkTrZu0gW"
    delimiter = f"\r\n--{boundary}".encode()
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="prefix"\r\n\r\nedges/'.encode()
    edges = [64 * 1024 + n * MiB for n in range(4)]
    files = {}
    for n, (edge, before) in enumerate(zip(edges, (1, 3, 14, len(delimiter) - 1), strict=True)):
        body += (
            delimiter
            + (
                f'\r\nContent-Disposition: form-data; name="file"; filename="f{n}.bin"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
        )
        files[f"edges/f{n}.bin"] = data = os.urandom(edge - before - len(body))
        body += data
    body += delimiter + b"--\r\n"
    posted = httpx.post(
        f"{live.url}/objects",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    assert posted.status_code == 201, posted.text
    stored = {item["key"]: item["sha256"] for item in posted.json()["objects"]}
    assert stored == {key: hashlib.sha256(data).hexdigest() for key, data in files.items()}
    for key, data in files.items():
        assert httpx.get(f"{live.url}/objects/{key}", timeout=60).content == data


def test_resume_a_broken_download_with_range(live: RunningGateway) -> None:
    data = os.urandom(6 * MiB + 123)
    with httpx.Client(base_url=live.url, timeout=30) as client:
        etag = client.put("/objects/resume.bin", content=data).headers["etag"]
        received = b""
        with client.stream("GET", "/objects/resume.bin") as response:
            for chunk in response.iter_raw():
                received += chunk
                if len(received) > 2 * MiB:
                    break  # the connection drops
        rest = client.get(
            "/objects/resume.bin", headers={"Range": f"bytes={len(received)}-", "If-Range": etag}
        )
        assert rest.status_code == 206
        assert rest.headers["content-range"] == f"bytes {len(received)}-{len(data) - 1}/{len(data)}"
        assert received + rest.content == data


def test_client_gone_mid_raw_upload_leaves_nothing(live: RunningGateway) -> None:
    head = b"PUT /objects/partial.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 20971520\r\n\r\n"
    sock = raw_request(live, head, os.urandom(3 * MiB))
    wait_for(lambda: len(tmp_files(live.data_dir)) == 1, what="the upload to start")
    sock.close()
    wait_for(lambda: tmp_files(live.data_dir) == [], what="the temp file to go")
    assert httpx.get(f"{live.url}/objects/partial.bin").status_code == 404
    assert blob_files(live.data_dir) == []


def test_client_gone_between_form_parts_leaves_nothing(live: RunningGateway) -> None:
    boundary = b"xyzzy"
    first = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
        b'filename="one.bin"\r\n\r\n' + os.urandom(2 * MiB) + b"\r\n"
    )
    second = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
        b'filename="two.bin"\r\n\r\n' + os.urandom(MiB)
    )
    head = (
        b"POST /objects HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
        b"boundary=" + boundary + b"\r\nContent-Length: 10000000\r\n\r\n"
    )
    sock = raw_request(live, head, first + second)
    wait_for(lambda: len(tmp_files(live.data_dir)) == 2, what="both parts to be staged")
    sock.close()
    wait_for(lambda: tmp_files(live.data_dir) == [], what="the staged parts to go")
    listing = httpx.get(f"{live.url}/objects").json()
    assert listing["objects"] == []


def test_client_gone_mid_download_closes_the_file(live: RunningGateway) -> None:
    httpx.put(f"{live.url}/objects/long.bin", content=os.urandom(32 * MiB), timeout=30)
    assert open_blob_fds(live) == []
    sockets = []
    for _ in range(4):
        sock = raw_request(live, b"GET /objects/long.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.recv(65536)
        sockets.append(sock)
    wait_for(lambda: len(open_blob_fds(live)) == 4, what="four open downloads")
    for sock in sockets:
        sock.close()
    wait_for(lambda: open_blob_fds(live) == [], what="the files to be closed")
    assert httpx.get(f"{live.url}/readyz").status_code == 200


def test_declared_size_over_the_limit_is_refused_before_the_body(live: RunningGateway) -> None:
    sock = raw_request(
        live, b"PUT /objects/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 107374182400\r\n\r\n"
    )
    response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 413 ")
    assert b"too-large" in response and b"connection: close" in response.lower()
    sock.close()


def test_chunked_upload_over_the_limit_is_cut_off(live: RunningGateway) -> None:
    sock = raw_request(
        live, b"PUT /objects/huge HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n" % MiB + bytes(MiB) + b"\r\n"
    try:
        for _ in range(80):  # 80 MiB > the 64 MiB limit
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the gateway closed the connection: what this test wants
    response = read_response(sock)
    sock.close()
    if response:  # the 413 may be lost when the server closes with unread data
        assert response.startswith(b"HTTP/1.1 413 ")
    wait_for(lambda: tmp_files(live.data_dir) == [], what="the temp file to go")
    assert httpx.get(f"{live.url}/objects/huge").status_code == 404


def test_concurrent_writers_of_one_key(live: RunningGateway) -> None:
    bodies = [bytes([n]) * (3 * MiB) for n in range(6)]
    with ThreadPoolExecutor(6) as pool:
        statuses = list(
            pool.map(
                lambda body: (
                    httpx.put(f"{live.url}/objects/same", content=body, timeout=30).status_code
                ),
                bodies,
            )
        )
    assert statuses == [201] * 6
    assert httpx.get(f"{live.url}/objects/same").content in bodies
    assert len(blob_files(live.data_dir)) == 1


def test_kill_9_mid_upload_leaves_nothing_visible(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with running_gateway(data_dir=data_dir) as gw:
        sock = raw_request(
            gw,
            b"PUT /objects/cut.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n",
            os.urandom(4 * MiB),
        )
        wait_for(lambda: len(tmp_files(data_dir)) == 1, what="the upload to start")
        gw.process.send_signal(signal.SIGKILL)
        gw.process.wait()
        sock.close()
    assert len(tmp_files(data_dir)) == 1  # what the crash left behind
    with running_gateway(data_dir=data_dir) as gw:
        assert tmp_files(data_dir) == []  # swept at start
        assert httpx.get(f"{gw.url}/objects/cut.bin").status_code == 404
        assert httpx.get(f"{gw.url}/objects").json()["objects"] == []


def test_make_run_defaults(tmp_path: Path) -> None:
    """`gateway serve` with no configuration: loopback, port 8000, ./data."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--port", "0", "--log-level", "info"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        line = b""
        deadline = time.monotonic() + 30
        while b"Uvicorn running on" not in line and time.monotonic() < deadline:
            assert process.poll() is None, "gateway serve exited"
            line = process.stdout.readline() if process.stdout else b""
        assert b"http://127.0.0.1:" in line
        assert (tmp_path / "data" / "index.sqlite3").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
