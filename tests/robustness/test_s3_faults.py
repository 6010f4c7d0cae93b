"""S3 breaking under a real gateway: a fault proxy between `gateway serve` and moto.

For every fault during an upload, a download, a listing or a delete, the client gets a
clear answer (a 502 or 503 problem, or the object whole), within the documented time; no
object of a failed upload is visible, no multipart upload is left open once S3 answers
again, and the same gateway process serves normally once the fault clears.
"""

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import BackendUnavailable
from gateway.storage.s3 import S3Storage
from gateway.testing import MotoServer
from tests.conftest import s3_settings
from tests.faults import FaultProxy
from tests.helpers import wait_for
from tests.robustness import tus
from tests.robustness.conftest import FAST_TIMEOUTS, MiB, Served, serve

READ_TIMEOUT = float(FAST_TIMEOUTS["GATEWAY_S3_READ_TIMEOUT"].removesuffix("s"))
ATTEMPTS = int(FAST_TIMEOUTS["GATEWAY_S3_MAX_ATTEMPTS"])
# The documented bound (README, "Timeouts"): S3_MAX_ATTEMPTS x S3_READ_TIMEOUT, botocore's
# backoff between tries (under 1 s for the first), and the wait for an upload's abort (at
# most S3_READ_TIMEOUT here); plus slack for a loaded machine.
BOUND = ATTEMPTS * READ_TIMEOUT + 1 + READ_TIMEOUT + 3
SMALL = os.urandom(MiB)
LARGE = os.urandom(12 * MiB + 1)  # three parts of 5 MiB
STORED = os.urandom(12 * MiB)  # read back by the download cases


@pytest.fixture(scope="module")
def proxy(moto: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(int(moto.url.rsplit(":", 1)[1])) as fault_proxy:
        yield fault_proxy


@pytest.fixture(scope="module")
def gw(
    moto: MotoServer, proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """One gateway for the whole module: each case must leave it serving."""
    with serve("s3", tmp_path_factory.mktemp("data"), moto, endpoint=proxy.url) as served:
        response = httpx.put(f"{served.url}/objects/stored", content=STORED, timeout=60)
        assert response.status_code == 201
        yield served


@pytest.fixture(autouse=True)
def healed(proxy: FaultProxy) -> Iterator[None]:
    proxy.set()
    yield
    proxy.set()


def form(key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    files = [("file", ("one.bin", LARGE[: 6 * MiB])), ("file", ("two.bin", SMALL))]
    return {"prefix": f"{key}/"}, {"files": files}


@dataclass
class Case:
    name: str
    method: str
    path: str
    faults: dict[str, Any]
    ok: bool  # the fault is ridden out (slowed down, retried) rather than reported
    body: bytes | None = None
    form: bool = False
    keys: list[str] = field(default_factory=list)  # what a failure must not leave visible


def upload_cases() -> list[Case]:
    cases = []
    table: list[tuple[str, dict[str, Any], bool]] = [
        ("refused", {"refuse": True}, False),
        ("reset", {"cut_after": 0}, False),
        ("cut mid-part", {"cut_after": 512 * 1024}, False),
        ("stalled", {"stall": True}, False),
        ("slow", {"latency": 0.01}, True),
        ("throttled", {"rate": 32 * MiB}, True),
    ]
    for name, faults, ok in table:
        cases += [
            Case(f"put small, {name}", "PUT", "/objects/small", faults, ok, SMALL, keys=["small"]),
            Case(f"put large, {name}", "PUT", "/objects/large", faults, ok, LARGE, keys=["large"]),
            Case(
                f"form, {name}",
                "POST",
                "/objects",
                faults,
                ok,
                form=True,
                keys=["form/one.bin", "form/two.bin"],
            ),
        ]
    return cases


def other_cases() -> list[Case]:
    cases = []
    table: list[tuple[str, dict[str, Any], bool]] = [
        ("refused", {"refuse": True}, False),
        ("stalled", {"stall": True}, False),
        ("slow", {"latency": 0.01}, True),
    ]
    for name, faults, ok in table:
        cases += [
            Case(f"get, {name}", "GET", "/objects/stored", faults, ok),
            Case(f"head, {name}", "HEAD", "/objects/stored", faults, ok),
            Case(f"list, {name}", "GET", "/objects?prefix=st", faults, ok),
            Case(f"readyz, {name}", "GET", "/readyz", faults, ok),
        ]
    cases.append(Case("list, replies cut", "GET", "/objects", {"cut_reply_after": 100}, False))
    cases.append(Case("delete, refused", "DELETE", "/objects/stored", {"refuse": True}, False))
    return cases


def send(gw: Served, case: Case) -> httpx.Response:
    extra: dict[str, Any] = {}
    if case.form:
        data, files = form("form")
        extra = {"data": data, **files}
    elif case.body is not None:
        extra = {"content": case.body}
    return httpx.request(case.method, gw.url + case.path, timeout=120, **extra)


@pytest.mark.parametrize("case", upload_cases() + other_cases(), ids=lambda case: case.name)
def test_a_fault_gets_a_clear_answer_and_leaves_nothing(
    gw: Served, proxy: FaultProxy, case: Case
) -> None:
    proxy.set(**case.faults)
    started = time.monotonic()
    response = send(gw, case)
    took = time.monotonic() - started
    proxy.set()
    if case.ok:
        assert response.status_code < 300, response.text
        if case.method == "GET" and case.path == "/objects/stored":
            assert response.content == STORED
    else:
        assert response.status_code in (502, 503), response.text
        assert took < BOUND, f"answered after {took:.1f}s"
        if case.method != "HEAD":
            problem = response.json()
            assert problem["code"] in ("backend-unavailable", "backend-error")
            assert "Traceback" not in response.text and "127.0.0.1" not in response.text
        gw.assert_clean(*case.keys)
    # the fault has cleared: the same process serves, and nothing stays behind
    for key in case.keys:
        httpx.delete(f"{gw.url}/objects/{key}", timeout=30)
    assert httpx.get(f"{gw.url}/objects/stored", timeout=30).content == STORED
    gw.assert_serves()
    wait_for(lambda: gw.leftovers() == [], timeout=30, what="no open multipart upload")
    assert "unhandled error" not in gw.gateway.log()


def stream_until(gw: Served, received: int, then: Callable[[], None]) -> tuple[int, str]:
    """GET the stored object; after `received` bytes call `then`; how many bytes came and
    how the download ended."""
    got = 0
    try:
        with httpx.stream("GET", f"{gw.url}/objects/stored", timeout=30) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                if got < received <= got + len(chunk):
                    then()
                got += len(chunk)
    except httpx.RemoteProtocolError as exc:
        return got, str(exc)
    return got, "complete"


def test_s3_cutting_a_download_short_cuts_the_response(gw: Served, proxy: FaultProxy) -> None:
    proxy.set(cut_reply_after=3 * MiB)
    got, ended = stream_until(gw, 0, lambda: None)
    # never a short body passed off as whole
    assert got < len(STORED) and "complete message body" in ended
    proxy.set()
    assert httpx.get(f"{gw.url}/objects/stored", timeout=30).content == STORED
    assert "unhandled error" not in gw.gateway.log()


def test_s3_stalling_mid_download_ends_it_within_the_read_timeout(
    gw: Served, proxy: FaultProxy
) -> None:
    stalled_at: list[float] = []

    def stall() -> None:
        proxy.set(stall=True)
        stalled_at.append(time.monotonic())

    got, ended = stream_until(gw, MiB, stall)
    took = time.monotonic() - stalled_at[0]
    proxy.set()
    assert got < len(STORED) and "complete message body" in ended
    # what the proxy had already passed on is sent first; then one read timeout, no retry
    assert took < READ_TIMEOUT + 3, f"cut after {took:.1f}s"
    assert httpx.get(f"{gw.url}/objects/stored", timeout=30).content == STORED


def test_a_lost_reply_is_retried(gw: Served, proxy: FaultProxy) -> None:
    """S3 did the work but its answer never came: botocore's retry finds the work done."""
    for pattern, path, body in [
        (f"PUT /{gw.bucket}/lost-put ".encode(), "/objects/lost-put", SMALL),
        (f"POST /{gw.bucket}/lost-mp?uploadId=".encode(), "/objects/lost-mp", LARGE),
        (b"?tagging", "/objects/lost-tag", LARGE),
    ]:
        proxy.set(lose_reply_to=pattern, lose_limit=1)
        response = httpx.put(gw.url + path, content=body, timeout=60)
        assert proxy.lost_replies > 0
        proxy.set()
        assert response.status_code == 201, response.text
        got = httpx.get(gw.url + path, timeout=30)
        assert got.content == body and got.headers["etag"] == response.headers["etag"]
    assert gw.leftovers() == []


def test_an_abort_that_fails_is_tried_again_once_s3_answers(gw: Served, proxy: FaultProxy) -> None:
    """S3 goes away mid-upload: the parts fail, and so does the abort. The multipart upload
    must not stay open once S3 is back, without a restart."""
    answers: list[httpx.Response] = []

    def upload() -> None:
        answers.append(httpx.put(f"{gw.url}/objects/orphan", content=LARGE * 2, timeout=60))

    thread = threading.Thread(target=upload)
    thread.start()
    wait_for(lambda: gw.leftovers() != [], what="the multipart upload to start")
    proxy.set(refuse=True)
    thread.join(60)
    assert answers[0].status_code == 503
    assert gw.leftovers() == ["orphan"]  # the abort could not reach S3
    proxy.set()
    wait_for(lambda: gw.leftovers() == [], timeout=20, what="the abort to be tried again")
    gw.assert_clean("orphan")


def test_orphans_of_lost_creates_are_swept_without_a_restart(
    moto: MotoServer, tmp_path: Path
) -> None:
    """A CreateMultipartUpload whose answer is lost is retried, and S3 then holds an upload
    the gateway never learned of. The periodic sweep aborts it once it is older than
    UPLOAD_EXPIRY (moto dates every upload in 2010, so here at the first sweep)."""
    with (
        FaultProxy(int(moto.url.rsplit(":", 1)[1])) as proxy,
        serve("s3", tmp_path, moto, {"GATEWAY_UPLOAD_EXPIRY": "20s"}, proxy.url) as gw,
    ):
        proxy.set(lose_reply_to=b"?uploads", lose_limit=1)
        response = httpx.put(f"{gw.url}/objects/twice", content=LARGE, timeout=60)
        assert response.status_code == 201 and proxy.lost_replies == 1
        assert gw.leftovers() == ["twice"]  # the first upload, of the lost answer
        wait_for(lambda: gw.leftovers() == [], timeout=20, what="the sweep")
        assert httpx.get(f"{gw.url}/objects/twice", timeout=30).content == LARGE


@pytest.mark.parametrize("attempts", [1, 3])
async def test_s3_max_attempts_is_the_number_of_tries(
    moto: MotoServer, proxy: FaultProxy, attempts: int
) -> None:
    settings = s3_settings(moto, s3_max_attempts=attempts)
    settings = settings.model_copy(update={"s3_endpoint_url": proxy.url})
    async with S3Storage(settings) as storage:
        tries: list[str] = []
        storage._client.meta.events.register("before-send.s3", lambda **_: tries.append(""))
        proxy.set(cut_after=0)  # every try is reset
        with pytest.raises(BackendUnavailable):
            await storage.stat("anything")
        assert len(tries) == attempts


@pytest.mark.parametrize(
    ("name", "faults", "ok"),
    [
        ("refused", {"refuse": True}, False),
        ("reset", {"cut_after": 0}, False),
        ("cut mid-part", {"cut_after": 512 * 1024}, False),
        ("stalled", {"stall": True}, False),
        ("part reply lost", {"lose_reply_to": b"partNumber=", "lose_limit": 1}, True),
        ("slow", {"latency": 0.01}, True),
    ],
)
def test_a_tus_patch_under_a_fault_resumes_from_its_durable_offset(
    gw: Served, proxy: FaultProxy, name: str, faults: dict[str, Any], ok: bool
) -> None:
    key = "tus-" + name.replace(" ", "-")
    upload = tus.create(gw.url, len(LARGE), key)
    assert tus.patch(upload, 0, LARGE[: 6 * MiB]).status_code == 204
    proxy.set(**faults)
    started = time.monotonic()
    response = tus.patch(upload, 6 * MiB, LARGE[6 * MiB :])
    took = time.monotonic() - started
    proxy.set()
    if ok:
        assert response.status_code == 204, response.text
    else:
        assert response.status_code in (502, 503), response.text
        assert took < BOUND, f"answered after {took:.1f}s"
        assert response.json()["code"] in ("backend-unavailable", "backend-error")
        assert httpx.get(f"{gw.url}/objects/{key}", timeout=30).status_code == 404
        # the client resumes from what the gateway kept, on the same process
        assert 6 * MiB <= tus.offset(upload) < len(LARGE)
        assert tus.resume(upload, LARGE).status_code == 204
    assert httpx.get(f"{gw.url}/objects/{key}", timeout=30).content == LARGE
    wait_for(lambda: gw.leftovers() == [], timeout=30, what="no open multipart upload")
    assert "unhandled error" not in gw.gateway.log()
