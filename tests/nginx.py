"""Debian's nginx with infra/nginx/gateway.conf, run in the foreground in a folder of its own.

The configuration is the one in infra/, with only the upstream servers and the listening
address changed, and wrapped in a main file that keeps pid, logs and temporary files in the
folder.
"""

import contextlib
import grp
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.testing import free_port, stop, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "infra" / "nginx" / "gateway.conf"

_UPSTREAM_SERVER = re.compile(r"^\s*server\s+gateway-\d+:\d+[^;]*;\n", re.MULTILINE)
_LISTEN = re.compile(r"^\s*listen\s+[^;]+;\n", re.MULTILINE)


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is missing: .ci/run installs it (apt-get install nginx)")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return found


def site_config(upstream_ports: Sequence[int], port: int) -> str:
    """infra's site with the upstream at `upstream_ports` and the server on `port`."""
    text = SITE.read_text()
    first = _UPSTREAM_SERVER.search(text)
    assert first is not None, "no `server gateway-N:port;` line in the upstream block"
    servers = "".join(
        f"    server 127.0.0.1:{upstream} max_fails=3 fail_timeout=10s;\n"
        for upstream in upstream_ports
    )
    text = text[: first.start()] + servers + _UPSTREAM_SERVER.sub("", text[first.start() :])
    first_listen = _LISTEN.search(text)
    assert first_listen is not None, "no `listen` line"
    return (
        text[: first_listen.start()]
        + f"    listen 127.0.0.1:{port};\n"
        + _LISTEN.sub("", text[first_listen.start() :])
    )


def main_config(prefix: Path, site: Path) -> str:
    user = ""
    if os.geteuid() == 0:  # workers would otherwise run as whatever the build chose
        nobody = pwd.getpwnam("nobody")
        user = f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"
    temp_paths = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
daemon off;
{user}
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{
    worker_connections 256;
}}
http {{
    access_log {prefix}/access.log;
{temp_paths}
    include {site};
}}
"""


@dataclass
class Nginx:
    url: str
    prefix: Path
    config: Path

    def error_log(self) -> str:
        return (self.prefix / "error.log").read_text(errors="replace")


def prepare(upstream_ports: Sequence[int], prefix: Path) -> tuple[Path, int]:
    """Write the configuration into `prefix`; its main file and the port to listen on."""
    port = free_port()
    prefix.chmod(0o755)  # nginx's workers run as nobody when the tests run as root
    site = prefix / "gateway.conf"
    site.write_text(site_config(upstream_ports, port))
    config = prefix / "nginx.conf"
    config.write_text(main_config(prefix, site))
    return config, port


def check_config(config: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nginx_binary(), "-t", "-p", str(prefix), "-c", str(config), "-e", str(prefix / "e.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )


@contextlib.contextmanager
def running_nginx(upstream_ports: Sequence[int], ready_path: str = "/healthz") -> Iterator[Nginx]:
    binary = nginx_binary()
    with tempfile.TemporaryDirectory(prefix="gw-nginx-") as folder:
        prefix = Path(folder)
        config, port = prepare(upstream_ports, prefix)
        process = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            try:
                wait_until_ready(url + ready_path, process)
            except Exception as exc:
                log = (prefix / "error.log").read_text(errors="replace")
                raise RuntimeError(f"nginx did not start: {exc}\n{log}") from exc
            yield Nginx(url, prefix, config)
        finally:
            stop(process)
