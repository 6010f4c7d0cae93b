"""Metrics, request ids and the access log, in-process."""

import json
import logging
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.logs import JsonFormatter, TextFormatter
from gateway.settings import Settings
from tests.helpers import MiB

ROUTE = "/objects/{key}"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def requests(route: str, method: str, status: int) -> float:
    return sample("gateway_requests_total", route=route, method=method, status=str(status))


async def test_metrics_page_has_every_family(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    labels: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(response.text):
        for name, sample_labels, _value, *_ in family.samples:
            labels.setdefault(name, set()).add(frozenset(sample_labels))
    assert frozenset({"route", "method", "status"}) in labels["gateway_requests_total"]
    assert frozenset({"route", "method", "le"}) in labels["gateway_request_duration_seconds_bucket"]
    for name in ("gateway_bytes_received_total", "gateway_bytes_sent_total"):
        assert labels[name] == {frozenset()}
    assert labels["gateway_uploads_in_progress"] == {frozenset()}
    assert frozenset({"operation", "le"}) in labels["gateway_backend_duration_seconds_bucket"]
    assert labels["gateway_backend_errors_total"] == {frozenset({"operation"})}
    assert labels["gateway_tus_uploads_total"] == {frozenset({"event"})}
    events = {
        dict(s.labels)["event"]
        for family in text_string_to_metric_families(response.text)
        if family.name == "gateway_tus_uploads"
        for s in family.samples
    }
    assert events == {"created", "finished", "terminated", "expired"}


async def test_requests_are_counted_by_route_template(client: httpx.AsyncClient) -> None:
    before = {
        "put": requests(ROUTE, "PUT", 201),
        "get": requests(ROUTE, "GET", 200),
        "missing": requests(ROUTE, "GET", 404),
        "unmatched": requests("unmatched", "GET", 404),
        "other": requests(ROUTE, "other", 405),
        "list": requests("/objects", "GET", 200),
    }
    await client.put("/objects/private/salaries.xlsx", content=b"1")
    await client.get("/objects/private/salaries.xlsx")
    await client.get("/objects/private/nothing-here")
    await client.get("/no/such/page")
    await client.request("BREW", "/objects/private/salaries.xlsx")
    await client.get("/objects")
    after = {
        "put": requests(ROUTE, "PUT", 201),
        "get": requests(ROUTE, "GET", 200),
        "missing": requests(ROUTE, "GET", 404),
        "unmatched": requests("unmatched", "GET", 404),
        "other": requests(ROUTE, "other", 405),
        "list": requests("/objects", "GET", 200),
    }
    assert {name: after[name] - before[name] for name in before} == dict.fromkeys(before, 1)
    page = (await client.get("/metrics")).text
    assert "salaries" not in page and "nothing-here" not in page and "/no/such" not in page
    assert 'route="/objects/{key}"' in page and "BREW" not in page


async def test_duration_is_observed_per_route(client: httpx.AsyncClient) -> None:
    name = "gateway_request_duration_seconds_count"
    before = sample(name, route="/healthz", method="GET")
    await client.get("/healthz")
    await client.get("/healthz")
    assert sample(name, route="/healthz", method="GET") - before == 2


async def test_body_bytes_are_counted_both_ways(client: httpx.AsyncClient) -> None:
    body = b"\x01" * (10 * MiB + 12345)  # past one counter bump, and a remainder
    received = sample("gateway_bytes_received_total")
    await client.put("/objects/counted.bin", content=body)
    assert sample("gateway_bytes_received_total") - received == len(body)
    sent = sample("gateway_bytes_sent_total")
    response = await client.get("/objects/counted.bin")
    assert response.content == body
    assert sample("gateway_bytes_sent_total") - sent == len(body)


async def test_uploads_in_progress_counts_upload_requests(client: httpx.AsyncClient) -> None:
    idle = sample("gateway_uploads_in_progress")
    during: list[float] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        during.append(sample("gateway_uploads_in_progress"))
        yield b"second"

    assert (await client.put("/objects/slow.bin", content=body())).status_code == 201
    assert during == [idle + 1]
    assert sample("gateway_uploads_in_progress") == idle
    await client.get("/objects/slow.bin")
    assert sample("gateway_uploads_in_progress") == idle


def backend(operation: str) -> tuple[float, float]:
    return (
        sample("gateway_backend_duration_seconds_count", operation=operation),
        sample("gateway_backend_errors_total", operation=operation),
    )


async def test_backend_calls_are_timed(client: httpx.AsyncClient) -> None:
    operations = ("put", "stage", "commit", "open", "stat", "delete", "list", "check")
    before = {op: backend(op) for op in operations}
    await client.put("/objects/b.txt", content=b"b")  # put
    await client.post("/upload/", files={"file": ("f.txt", b"f")})  # stage + commit
    await client.get("/objects/b.txt")  # open
    await client.head("/objects/b.txt")  # stat
    await client.head("/objects/missing")  # stat, a 404 but not a backend error
    await client.delete("/objects/b.txt")  # delete
    await client.get("/objects")  # list
    await client.get("/readyz")  # check
    calls = {op: backend(op)[0] - before[op][0] for op in operations}
    assert calls == {**dict.fromkeys(operations, 1), "stat": 2}
    assert all(backend(op)[1] == before[op][1] for op in operations)


async def test_backend_failures_are_counted(client: httpx.AsyncClient, settings: Settings) -> None:
    if settings.backend != "local":
        pytest.skip("breaks the local data folder (tests/test_s3.py makes S3 unreachable)")
    calls, errors = backend("check")
    shutil.rmtree(settings.data_dir / "blobs")
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert backend("check") == (calls + 1, errors + 1)


async def test_request_ids(client: httpx.AsyncClient) -> None:
    kept = await client.get("/healthz", headers={"X-Request-ID": "req-42.a:b"})
    assert kept.headers["x-request-id"] == "req-42.a:b"
    for bad in ("has space", "x" * 129, "semi;colon", ""):
        replaced = await client.get("/healthz", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"]), bad
    first, second = (await client.get("/nope"), await client.get("/nope"))
    assert first.status_code == 404 and first.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_a_bug_is_a_counted_500_with_a_request_id(app: FastAPI) -> None:
    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/broken", broken)
    before = requests("/broken", "GET", 500)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        response = await client.get("/broken")
    assert response.status_code == 500 and response.headers["x-request-id"]
    assert requests("/broken", "GET", 500) - before == 1


@pytest.fixture
def access_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway.access")
    return caplog


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "gateway.access"]


async def test_one_access_line_per_request(
    client: httpx.AsyncClient, access_log: pytest.LogCaptureFixture
) -> None:
    await client.put(
        "/objects/a%20b/c.txt?disposition=inline",
        content=b"12345",
        headers={"Authorization": "Bearer t0ps3cr3t", "X-Request-ID": "put-1"},
    )
    [record] = access_records(access_log)
    record.request_id = "put-1"  # what the handler's filter adds in a served process
    line = json.loads(JsonFormatter().format(record))
    assert line == {
        "time": line["time"],
        "level": "info",
        "logger": "gateway.access",
        "message": line["message"],
        "request_id": "put-1",
        "method": "PUT",
        "route": ROUTE,
        "status": 201,
        "bytes_in": 5,
        "bytes_out": line["bytes_out"],
        "duration_s": line["duration_s"],
        "client": "127.0.0.1",
        "key": "a b/c.txt",
    }
    assert line["bytes_out"] > 100 and 0 < line["duration_s"] < 60
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    text = TextFormatter().format(record)
    assert re.fullmatch(
        r"\S+Z INFO gateway\.access: PUT /objects/\{key\} 201 \d+\.\d{3}s in=5 out=\d+ "
        r'client=127\.0\.0\.1 key="a b/c\.txt" id=put-1',
        text,
    )
    for secret in ("t0ps3cr3t", "Bearer", "disposition"):
        assert secret not in text and secret not in json.dumps(line)
    # a presigned URL's signature is never logged either, even when refused
    access_log.clear()
    refused = await client.get("/objects/a%20b/c.txt?expires=1&signature=s3cr3t-sig")
    assert refused.status_code == 403
    [record] = access_records(access_log)
    assert "s3cr3t" not in TextFormatter().format(record)
    assert "s3cr3t" not in JsonFormatter().format(record)


async def test_form_uploads_log_their_keys(
    client: httpx.AsyncClient, access_log: pytest.LogCaptureFixture
) -> None:
    files = [("file", ("one.txt", b"1")), ("file", ("two.txt", b"2"))]
    response = await client.post("/objects", data={"prefix": "in/"}, files=files)
    assert response.status_code == 201
    [record] = access_records(access_log)
    assert record.fields["key"] == ["in/one.txt", "in/two.txt"]  # type: ignore[attr-defined]
    assert 'key="in/one.txt" "in/two.txt"' in record.getMessage()


async def test_readyz_answers_503_while_draining(client: httpx.AsyncClient, app: FastAPI) -> None:
    assert (await client.get("/readyz")).status_code == 200
    app.state.lifecycle.draining = True
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["code"] == "backend-unavailable"
    assert (await client.get("/healthz")).status_code == 200


def test_tus_events_are_counted() -> None:
    before = sample("gateway_tus_uploads_total", event="finished")
    metrics.tus_event("finished")
    assert sample("gateway_tus_uploads_total", event="finished") - before == 1
    with pytest.raises(ValueError, match="unknown tus event"):
        metrics.tus_event("paused")  # type: ignore[arg-type]


async def test_backend_extras_stay_reachable(app: FastAPI, settings: Settings) -> None:
    # The metrics proxy hides nothing a backend has beyond the interface.
    if settings.backend != "local":
        pytest.skip("looks at the local backend's own attributes")
    assert app.state.storage.name == "local"
    assert Path(app.state.storage.root) == settings.data_dir.resolve()
