"""`gateway serve` as operators run it: logs, metrics across workers, graceful shutdown."""

import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.testing import RunningGateway, running_gateway
from tests.conftest import blob_files, tmp_files
from tests.helpers import MiB, raw_request, read_response, wait_for


def metric(gateway: RunningGateway, name: str, **labels: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics").text
    return sum(
        value
        for family in text_string_to_metric_families(text)
        for sample_name, sample_labels, value, *_ in family.samples
        if sample_name == name and labels.items() <= sample_labels.items()
    )


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_json_logs_one_line_per_request_and_no_secrets(tmp_path: Path) -> None:
    env = {"GATEWAY_LOG_FORMAT": "json"}
    with running_gateway(data_dir=tmp_path / "data", env=env, args=["--log-level", "info"]) as gw:
        response = httpx.put(
            f"{gw.url}/objects/logged.txt",
            content=b"hello",
            headers={"Authorization": "Bearer t0ps3cr3t", "X-Request-ID": "json-1"},
        )
        assert response.status_code == 201
        refused = httpx.get(
            f"{gw.url}/objects/logged.txt?signature=s3cr3t-sig&expires=1",
            headers={"X-Request-ID": "json-2"},
        )
        assert refused.status_code == 403
        wait_for(lambda: "json-2" in gw.log(), what="the access lines")
        log = gw.log()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "gateway.access"]
    assert {line["route"] for line in access} == {"/readyz", "/objects/{key}"}
    [line] = [line for line in access if line["request_id"] == "json-1"]
    assert (line["method"], line["route"], line["status"]) == ("PUT", "/objects/{key}", 201)
    assert (line["bytes_in"], line["key"]) == (5, "logged.txt")
    assert line["bytes_out"] == len(response.content)
    assert any(line["logger"] == "uvicorn.error" for line in lines)  # the server's own lines
    assert not any(line["logger"] == "uvicorn.access" for line in lines)
    for secret in ("s3cr3t", "t0ps3cr3t", "signature", "Bearer"):
        assert secret not in log


def test_a_client_that_leaves_is_counted_as_499(live: RunningGateway) -> None:
    head = b"PUT /objects/gone.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 20971520\r\n\r\n"
    sock = raw_request(live, head, os.urandom(3 * MiB))
    wait_for(lambda: len(tmp_files(live.data_dir)) == 1, what="the upload to start")
    sock.close()
    wait_for(
        lambda: metric(live, "gateway_requests_total", method="PUT", status="499") == 1,
        what="the request to be counted",
    )
    assert metric(live, "gateway_uploads_in_progress") == 0
    assert tmp_files(live.data_dir) == []


def test_a_client_that_leaves_mid_download_is_counted_as_499(live: RunningGateway) -> None:
    httpx.put(f"{live.url}/objects/long.bin", content=os.urandom(32 * MiB), timeout=30)
    sock = raw_request(live, b"GET /objects/long.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    sock.close()
    wait_for(
        lambda: metric(live, "gateway_requests_total", method="GET", status="499") == 1,
        what="the request to be counted",
    )
    downloads = metric(live, "gateway_requests_total", route="/objects/{key}", method="GET")
    assert downloads == 1


def test_shutdown_cuts_off_a_stalled_upload_after_the_grace_period(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    grace = 2.0
    with running_gateway(data_dir=data_dir, args=["--shutdown-grace", f"{grace:g}s"]) as gw:
        sock = raw_request(
            gw,
            b"PUT /objects/stalled.bin HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n",
            os.urandom(4 * MiB),
        )
        wait_for(lambda: len(tmp_files(data_dir)) == 1, what="the upload to start")
        signalled = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(gw.port), what="the listener to close")
        assert gw.process.poll() is None  # still waiting for the upload
        gw.process.wait(grace + 20)
        waited = time.monotonic() - signalled
        response = read_response(sock)
        sock.close()
    assert waited >= grace * 0.9, f"exited after {waited:.2f}s, before the grace period"
    assert not response.startswith(b"HTTP/1.1 201")
    assert tmp_files(data_dir) == []  # removed by the gateway itself, not by a later sweep
    assert blob_files(data_dir) == []
    with running_gateway(data_dir=data_dir) as gw:
        assert httpx.get(f"{gw.url}/objects/stalled.bin").status_code == 404


def test_an_upload_that_ends_within_the_grace_period_is_stored(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    body = os.urandom(8 * MiB)
    with running_gateway(data_dir=data_dir, args=["--shutdown-grace", "60s"]) as gw:
        head = b"PUT /objects/finished.bin HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
        sock = raw_request(gw, head % len(body), body[: 4 * MiB])
        wait_for(lambda: len(tmp_files(data_dir)) == 1, what="the upload to start")
        gw.process.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses_connections(gw.port), what="the listener to close")
        sock.sendall(body[4 * MiB :])
        response = read_response(sock, timeout=30)
        sock.close()
        gw.process.wait(30)  # and then it stops without waiting out the 60 s
    assert response.startswith(b"HTTP/1.1 201 ")
    assert tmp_files(data_dir) == []
    with running_gateway(data_dir=data_dir) as gw:
        assert httpx.get(f"{gw.url}/objects/finished.bin").content == body


def test_readyz_turns_503_while_draining(tmp_path: Path) -> None:
    with running_gateway(data_dir=tmp_path / "data", args=["--shutdown-drain", "30s"]) as gw:
        assert httpx.get(f"{gw.url}/readyz").status_code == 200
        gw.process.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{gw.url}/readyz").status_code == 503, what="a 503")
        # Still serving meanwhile, so that requests already routed here succeed.
        assert httpx.get(f"{gw.url}/healthz").status_code == 200
        assert httpx.put(f"{gw.url}/objects/late.txt", content=b"late").status_code == 201
        # A second signal ends the drain at once.
        gw.process.send_signal(signal.SIGTERM)
        gw.process.wait(15)


def test_workers_share_their_metrics(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"from an earlier run")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with running_gateway(data_dir=tmp_path / "data", env=env, args=["--workers", "2"]) as gw:
        assert not (metrics_dir / "counter_999999.db").exists()
        wait_for(
            lambda: len({path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob("*.db")}) == 2,
            what="both workers to write metrics",
        )
        before = metric(gw, "gateway_requests_total", route="/healthz")
        for _ in range(20):  # new connections, which the kernel spreads over the workers
            with httpx.Client() as client:
                assert client.get(f"{gw.url}/healthz").status_code == 200
        assert metric(gw, "gateway_requests_total", route="/healthz") - before == 20
        assert metric(gw, "gateway_uploads_in_progress") == 0
        gw.process.send_signal(signal.SIGTERM)
        gw.process.wait(30)
    assert not list(metrics_dir.glob("gauge_livesum_*.db"))  # dead workers count no uploads


def test_workers_get_a_metrics_folder_of_their_own(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    with running_gateway(data_dir=tmp_path / "data", env=env, args=["--workers", "2"]) as gw:
        [folder] = scratch.glob("gateway-metrics-*")
        wait_for(lambda: any(folder.glob("counter_*.db")), what="the workers' metrics")
        assert metric(gw, "gateway_requests_total", route="/readyz") >= 1
        gw.process.send_signal(signal.SIGTERM)
        gw.process.wait(30)
    assert not list(scratch.glob("gateway-metrics-*"))


@pytest.mark.parametrize("flag", ["--workers=0", "--shutdown-grace=-1", "--log-format=xml"])
def test_bad_operations_settings_are_refused(flag: str) -> None:
    from gateway.cli import build_parser, load_settings

    args = build_parser().parse_args(["serve", flag])
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "handler")}
    with pytest.raises(SystemExit, match=flag.split("=")[0]):
        load_settings(overrides)
