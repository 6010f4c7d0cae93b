"""Access on a real `gateway serve`: open mode, reloading the tokens file, presigned curl."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.testing import free_port, running_gateway
from gateway.tokens import stamp
from tests.conftest import SIGNING_KEY

ACCESS_VARIABLES = ("GATEWAY_TOKENS_FILE", "GATEWAY_ALLOW_ANONYMOUS", "GATEWAY_SIGNING_KEY")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def clean_environment(**extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if k not in ACCESS_VARIABLES}
    return environment | extra


def serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", str(free_port()), *args],
        env=clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_tokens(path: Path, *entries: tuple[str, list[str], str]) -> None:
    tokens = [{"token": t, "scopes": scopes, "prefix": prefix} for t, scopes, prefix in entries]
    path.write_text(json.dumps({"tokens": tokens}))


def status(url: str, token: str) -> int:
    return httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code


# --- open mode --------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "gateway.example"])
def test_open_mode_refuses_to_listen_beyond_loopback(tmp_path: Path, host: str) -> None:
    result = serve("--host", host, "--data-dir", str(tmp_path))
    assert result.returncode != 0
    message = result.stderr
    assert f"refusing to listen on {host} without tokens" in message
    for advice in ("--tokens-file", "GATEWAY_TOKENS_FILE", "gateway token create"):
        assert advice in message
    assert "--allow-anonymous" in message and "GATEWAY_ALLOW_ANONYMOUS=true" in message
    assert "Traceback" not in message


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--allow-anonymous"], {}),
        ([], {"GATEWAY_ALLOW_ANONYMOUS": "true"}),
    ],
)
def test_anonymous_serving_beyond_loopback_on_purpose(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    with running_gateway(data_dir=tmp_path, args=["--host", "0.0.0.0", *args], env=env) as gw:
        assert httpx.put(f"{gw.url}/objects/k", content=b"x").status_code == 201
        assert "without tokens" in gw.log()


def test_tokens_let_it_listen_anywhere(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    write_tokens(tokens, ("tok-live-0123456789", ["read"], ""))
    env = {"GATEWAY_TOKENS_FILE": str(tokens)}
    with running_gateway(data_dir=tmp_path / "data", args=["--host", "0.0.0.0"], env=env) as gw:
        assert httpx.get(f"{gw.url}/objects/k").status_code == 401
        assert status(f"{gw.url}/objects/k", "tok-live-0123456789") == 404


def test_a_broken_tokens_file_stops_the_start(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tokens": [{"token": "tok-do-not-print", "scopes": ["fly"]}]}')
    result = serve("--tokens-file", str(tokens), "--data-dir", str(tmp_path))
    assert result.returncode != 0
    assert "tokens file cannot be used" in result.stderr and "scopes" in result.stderr
    assert "tok-do-not-print" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("key", ["changeme", "x" * 40, "change-me-" + "0123456789abcdef" * 2])
def test_placeholder_signing_keys_stop_the_start(tmp_path: Path, key: str) -> None:
    result = serve("--data-dir", str(tmp_path), GATEWAY_SIGNING_KEY=key)
    assert result.returncode != 0
    assert "--signing-key" in result.stderr and "openssl rand" in result.stderr
    assert key not in result.stderr


# --- reloading the tokens file ----------------------------------------------------------


@pytest.fixture
def tokens_path(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.json"
    write_tokens(path, ("tok-first-aaaaaaaaaa", ["read", "list"], ""))
    return path


def test_a_changed_file_is_picked_up_without_a_restart(tmp_path: Path, tokens_path: Path) -> None:
    env = {"GATEWAY_TOKENS_FILE": str(tokens_path)}
    with running_gateway(data_dir=tmp_path / "data", env=env) as gw:
        listing = f"{gw.url}/objects"
        assert status(listing, "tok-first-aaaaaaaaaa") == 200
        assert status(listing, "tok-second-bbbbbbbbb") == 401

        replacement = tokens_path.with_suffix(".new")
        write_tokens(replacement, ("tok-second-bbbbbbbbb", ["list"], ""))
        replacement.replace(tokens_path)
        wait_for(lambda: status(listing, "tok-second-bbbbbbbbb") == 200, "the new token")
        assert status(listing, "tok-first-aaaaaaaaaa") == 401
        pid = gw.process.pid
        assert gw.process.poll() is None and pid == gw.process.pid


def test_sighup_reloads_the_file(tmp_path: Path, tokens_path: Path) -> None:
    env = {"GATEWAY_TOKENS_FILE": str(tokens_path)}
    with running_gateway(data_dir=tmp_path / "data", env=env) as gw:
        listing = f"{gw.url}/objects"
        assert status(listing, "tok-first-aaaaaaaaaa") == 200
        # Same inode, size and mtime: only the signal can tell the gateway to look again.
        before = os.stat(tokens_path)
        text = tokens_path.read_text().replace("tok-first-aaaaaaaaaa", "tok-other-cccccccccc")
        with tokens_path.open("r+") as out:
            out.write(text)
        os.utime(tokens_path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert stamp(tokens_path) == (before.st_ino, before.st_size, before.st_mtime_ns)

        gw.process.send_signal(signal.SIGHUP)
        wait_for(lambda: status(listing, "tok-other-cccccccccc") == 200, "the reload")
        assert status(listing, "tok-first-aaaaaaaaaa") == 401
        assert gw.process.poll() is None


def test_a_broken_file_keeps_the_old_tokens(tmp_path: Path, tokens_path: Path) -> None:
    env = {"GATEWAY_TOKENS_FILE": str(tokens_path)}
    with running_gateway(data_dir=tmp_path / "data", env=env) as gw:
        listing = f"{gw.url}/objects"
        tokens_path.write_text(
            '{"tokens": [{"token": "tok-half-written", "scopes": ["read"], "prefix": 7}]}'
        )
        gw.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "not reloaded" in gw.log(), "the reason in the log")
        assert "keeping the previous 1 token(s)" in gw.log() and "prefix" in gw.log()
        assert "tok-half-written" not in gw.log() and "tok-first" not in gw.log()
        assert status(listing, "tok-first-aaaaaaaaaa") == 200
        assert status(listing, "tok-half-written") == 401

        write_tokens(tokens_path, ("tok-mended-dddddddddd", ["list"], ""))
        wait_for(lambda: status(listing, "tok-mended-dddddddddd") == 200, "the mended file")


# --- presigned URLs with real clients ---------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_uploads_to_and_downloads_from_presigned_urls(
    tmp_path: Path, tokens_path: Path
) -> None:
    write_tokens(tokens_path, ("tok-writer-eeeeeeeeee", ["read", "write"], "shared/"))
    env = {"GATEWAY_TOKENS_FILE": str(tokens_path), "GATEWAY_SIGNING_KEY": SIGNING_KEY}
    source = tmp_path / "photo.jpg"
    source.write_bytes(os.urandom(300_000))
    with running_gateway(data_dir=tmp_path / "data", env=env) as gw:

        def url_for(method: str) -> str:
            answer = httpx.post(
                f"{gw.url}/presign",
                json={"key": "shared/photo 1.jpg", "method": method, "expires_in": 120},
                headers={"Authorization": "Bearer tok-writer-eeeeeeeeee"},
            )
            assert answer.status_code == 200, answer.text
            url: str = answer.json()["url"]
            return url

        def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                ["curl", "-sS", "--noproxy", "*", *args], capture_output=True, timeout=60
            )

        put_url = url_for("PUT")
        uploaded = curl("-f", "-T", str(source), put_url)
        assert uploaded.returncode == 0, uploaded.stderr
        assert json.loads(uploaded.stdout)["size"] == 300_000

        target = tmp_path / "back.jpg"
        downloaded = curl("-f", "-o", str(target), url_for("GET"))
        assert downloaded.returncode == 0, downloaded.stderr
        assert target.read_bytes() == source.read_bytes()

        form = curl("-f", "-F", f"file=@{source}", put_url)
        assert form.returncode == 0, form.stderr
        assert json.loads(form.stdout)["filename"] == "photo.jpg"

        refused = curl("-o", "/dev/null", "-w", "%{http_code}", "-T", str(source), url_for("GET"))
        assert refused.stdout == b"403"
