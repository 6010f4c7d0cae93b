"""`gateway upload` and `gateway download` as users run them, against a real `gateway serve`:
killed in the middle and run again, the result byte for byte the same; and the exit codes.

A transfer is slowed down by the client's own `--limit-rate` so that there is a middle to
kill it in; the tests wait on what the gateway or the disk shows, never on the clock.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from gateway.client import ExitCode, common
from gateway.testing import RunningGateway, running_gateway
from tests.conftest import TOKENS, tokens_json
from tests.helpers import MiB, wait_for

SLOW = ["--chunk-size", "64KiB", "--limit-rate", "1MiB"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with running_gateway(data_dir=tmp_path_factory.mktemp("client") / "data") as running:
        yield running


@pytest.fixture(autouse=True)
def interruptible() -> Iterator[None]:
    """The clients started here take Ctrl-C as in a terminal, also when the tests run in a
    background job (`make test &`), whose processes inherit SIGINT ignored: a handler of
    this process's own is the default again in a child."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if before is not None:
        signal.signal(signal.SIGINT, before)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """The client's state folder (XDG_CACHE_HOME), one per test."""
    return tmp_path / "cache"


def environment(gateway: RunningGateway, cache: Path, token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {"GATEWAY_URL": gateway.url, "XDG_CACHE_HOME": str(cache), "COLUMNS": "100"}
    if token:
        env["GATEWAY_TOKEN"] = token
    return env


def command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "gateway", *map(str, args)]


def run(
    gateway: RunningGateway, cache: Path, *args: str | Path, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        env=environment(gateway, cache, token),
        capture_output=True,
        text=True,
        timeout=60,
    )


def start(gateway: RunningGateway, cache: Path, *args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command(*args),
        env=environment(gateway, cache),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def require_tus(gateway: RunningGateway) -> None:
    if "tus-version" not in httpx.options(f"{gateway.url}/uploads/").headers:
        pytest.skip("the gateway has no /uploads/ routes (tus) yet")


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def stored(gateway: RunningGateway, key: str) -> bytes:
    response = httpx.get(f"{gateway.url}/objects/{key}")
    assert response.status_code == 200, response.text
    return response.content


def saved_upload_urls(cache: Path) -> list[str]:
    folder = cache / "gateway" / "uploads"
    if not folder.is_dir():
        return []
    urls = []
    for path in folder.glob("*.json"):
        try:
            urls.append(json.loads(path.read_text())["url"])
        except (ValueError, KeyError):  # being written
            continue
    return urls


def upload_offset(url: str) -> int:
    response = httpx.head(url, headers={"Tus-Resumable": "1.0.0"})
    return int(response.headers.get("upload-offset", 0))


def stop(process: subprocess.Popen[str], how: signal.Signals) -> tuple[int, str]:
    process.send_signal(how)
    _, err = process.communicate(timeout=30)
    return process.returncode, err


def test_the_rate_limit_makes_up_no_time_in_which_nothing_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--limit-rate`: after a slow answer or a retry's wait, the next bytes still go at the
    rate, not in a burst that catches up on the time lost."""
    clock = [1000.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(common, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep))
    throttle = common.Throttle(MiB)
    clock[0] += 5  # the upload is created slowly before its first byte goes
    began = clock[0]
    for _ in range(8):
        throttle(64 * 1024)
    assert clock[0] - began == pytest.approx(0.5)
    clock[0] += 3  # a retry waits
    resumed = clock[0]
    for _ in range(8):
        throttle(64 * 1024)
    assert clock[0] - resumed == pytest.approx(0.5)


def test_upload_two_files_then_download_one(
    gateway: RunningGateway, cache: Path, tmp_path: Path
) -> None:
    require_tus(gateway)
    first, second = tmp_path / "one.bin", tmp_path / "two words.txt"
    first_bytes = random_file(first, 3 * MiB + 1)
    second_bytes = b"some text\n" * 1000
    second.write_bytes(second_bytes)

    done = run(gateway, cache, "upload", first, second, "--prefix", "cli/")
    assert done.returncode == ExitCode.OK, done.stderr
    digest = hashlib.sha256(first_bytes).hexdigest()
    assert f"{first} -> cli/one.bin  3.0 MiB  sha256:{digest}" in done.stdout
    assert "cli/two words.txt" in done.stdout
    assert stored(gateway, "cli/one.bin") == first_bytes
    assert stored(gateway, "cli/two%20words.txt") == second_bytes
    assert saved_upload_urls(cache) == []

    target = tmp_path / "down"
    target.mkdir()
    fetched = run(gateway, cache, "download", "cli/one.bin", target)
    assert fetched.returncode == ExitCode.OK, fetched.stderr
    assert (target / "one.bin").read_bytes() == first_bytes
    assert f"sha256:{digest}" in fetched.stdout
    assert list(target.iterdir()) == [target / "one.bin"]  # no .part left

    exact = run(gateway, cache, "upload", second, "--key", "cli/exact name", "--quiet")
    assert (exact.returncode, exact.stdout, exact.stderr) == (0, "", "")
    assert stored(gateway, "cli/exact%20name") == second_bytes


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_an_interrupted_upload_goes_on_where_it_stopped(
    gateway: RunningGateway, cache: Path, tmp_path: Path, how: signal.Signals
) -> None:
    require_tus(gateway)
    source = tmp_path / f"resumed-{how.name}.bin"
    data = random_file(source, 4 * MiB)
    process = start(gateway, cache, "upload", source, *SLOW)
    wait_for(lambda: len(saved_upload_urls(cache)) == 1, what="the upload to be created")
    [url] = saved_upload_urls(cache)
    wait_for(lambda: upload_offset(url) >= 512 * 1024, what="the upload to get going")
    code, err = stop(process, how)
    if how is signal.SIGINT:
        assert code == ExitCode.INTERRUPTED and "run the same command again" in err
    else:
        assert code == -signal.SIGKILL
    held = upload_offset(url)
    assert 0 < held < len(data)

    again = run(gateway, cache, "upload", source)
    assert again.returncode == ExitCode.OK, again.stderr
    assert "resuming" in again.stderr
    assert stored(gateway, source.name) == data
    assert saved_upload_urls(cache) == []


def partial_download(
    gateway: RunningGateway, cache: Path, key: str, target: Path, size: int
) -> None:
    """Start a slow download of `key` into `target` and kill it once part of it is there."""
    part = target.with_name(target.name + ".part")
    process = start(gateway, cache, "download", key, target, "--limit-rate", "1MiB")
    wait_for(lambda: part.exists() and part.stat().st_size >= 512 * 1024, what="bytes to land")
    code, _ = stop(process, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert 0 < part.stat().st_size < size and not target.exists()


def test_an_interrupted_download_goes_on_where_it_stopped(
    gateway: RunningGateway, cache: Path, tmp_path: Path
) -> None:
    data = os.urandom(4 * MiB + 3)
    assert httpx.put(f"{gateway.url}/objects/dl/whole.bin", content=data).status_code == 201
    target = tmp_path / "whole.bin"
    partial_download(gateway, cache, "dl/whole.bin", target, len(data))
    held = target.with_name("whole.bin.part").stat().st_size

    again = run(gateway, cache, "download", "dl/whole.bin", target)
    assert again.returncode == ExitCode.OK, again.stderr
    assert "resuming whole.bin at" in again.stderr
    assert target.read_bytes() == data
    assert not target.with_name("whole.bin.part").exists()
    assert held > 0


def test_a_changed_object_is_downloaded_again_from_zero(
    gateway: RunningGateway, cache: Path, tmp_path: Path
) -> None:
    url = f"{gateway.url}/objects/dl/changing.bin"
    old = os.urandom(4 * MiB)
    assert httpx.put(url, content=old).status_code == 201
    target = tmp_path / "changing.bin"
    partial_download(gateway, cache, "dl/changing.bin", target, len(old))
    new = os.urandom(3 * MiB)
    assert httpx.put(url, content=new).status_code == 201

    again = run(gateway, cache, "download", "dl/changing.bin", target)
    assert again.returncode == ExitCode.OK, again.stderr
    assert "changed since" in again.stderr
    assert target.read_bytes() == new


def test_a_damaged_partial_download_fails_the_checksum(
    gateway: RunningGateway, cache: Path, tmp_path: Path
) -> None:
    data = os.urandom(4 * MiB)
    assert httpx.put(f"{gateway.url}/objects/dl/damaged.bin", content=data).status_code == 201
    target = tmp_path / "damaged.bin"
    partial_download(gateway, cache, "dl/damaged.bin", target, len(data))
    part = target.with_name("damaged.bin.part")
    with part.open("r+b") as damaged:
        damaged.seek(1000)
        damaged.write(bytes([data[1000] ^ 0xFF]))

    again = run(gateway, cache, "download", "dl/damaged.bin", target)
    assert again.returncode == ExitCode.CHECKSUM, again.stderr
    assert "SHA-256" in again.stderr
    assert not part.exists() and not target.exists()
    assert run(gateway, cache, "download", "dl/damaged.bin", target).returncode == 0
    assert target.read_bytes() == data


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("client-secured")
    tokens = folder / "tokens.json"
    tokens.write_text(tokens_json(TOKENS))
    env = {"GATEWAY_TOKENS_FILE": str(tokens)}
    with running_gateway(data_dir=folder / "data", env=env) as running:
        yield running


def test_exit_codes(
    gateway: RunningGateway, secured: RunningGateway, cache: Path, tmp_path: Path
) -> None:
    source = tmp_path / "file.txt"
    source.write_text("hello")
    missing = run(gateway, cache, "download", "no/such/key", tmp_path / "x")
    assert missing.returncode == ExitCode.NOT_FOUND and "404" in missing.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()

    unreadable = run(gateway, cache, "upload", tmp_path / "not-there.txt")
    assert unreadable.returncode == ExitCode.LOCAL and "cannot read" in unreadable.stderr
    usage = run(gateway, cache, "upload", source, source, "--key", "k")
    assert usage.returncode == ExitCode.USAGE
    assert run(gateway, cache, "upload").returncode == ExitCode.USAGE

    nobody = run(secured, cache, "download", "tenant-a/file.txt", tmp_path / "y")
    assert nobody.returncode == ExitCode.REFUSED and "--token" in nobody.stderr
    wrong = run(secured, cache, "download", "tenant-a/file.txt", tmp_path / "y", token="tok-a")
    assert wrong.returncode == ExitCode.REFUSED and "401" in wrong.stderr
    reader = TOKENS["a-read"][0]
    outside = run(secured, cache, "download", "tenant-b/file.txt", tmp_path / "y", token=reader)
    assert outside.returncode == ExitCode.REFUSED and "403" in outside.stderr

    nowhere = ("--url", "http://127.0.0.1:9", "--retries", "0")  # nothing listens on port 9
    unreachable = run(gateway, cache, "download", "k", tmp_path / "z", *nowhere)
    assert unreachable.returncode == ExitCode.UNAVAILABLE
    assert "cannot be reached" in unreachable.stderr
    unreachable = run(gateway, cache, "upload", source, *nowhere)
    assert unreachable.returncode == ExitCode.UNAVAILABLE
    assert "cannot be reached" in unreachable.stderr and "Traceback" not in unreachable.stderr
    assert run(gateway, cache, "upload", source, "--url", "gw.example").returncode == 2


def test_a_token_reaches_its_own_prefix_only(
    secured: RunningGateway, cache: Path, tmp_path: Path
) -> None:
    require_tus(secured)
    source = tmp_path / "report.txt"
    source.write_text("for tenant a")
    token = TOKENS["a-all"][0]
    mine = run(secured, cache, "upload", source, "--prefix", "tenant-a/", token=token)
    assert mine.returncode == ExitCode.OK, mine.stderr
    theirs = run(secured, cache, "upload", source, "--prefix", "tenant-b/", token=token)
    assert theirs.returncode == ExitCode.REFUSED and "403" in theirs.stderr
    back = run(secured, cache, "download", "tenant-a/report.txt", tmp_path / "r", token=token)
    assert back.returncode == ExitCode.OK, back.stderr
    assert (tmp_path / "r").read_text() == "for tenant a"
