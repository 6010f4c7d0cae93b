"""Running the gateway: uvicorn with one process or several, and the safe-defaults check."""

import contextlib
import functools
import ipaddress
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import Settings
from .tokens import TokensFileError

if TYPE_CHECKING:
    from fastapi import FastAPI


def serve(settings: Settings, overrides: Mapping[str, Any]) -> None:
    """Serve until stopped. `overrides` (the flags given) reach worker processes through
    their environment, as each of them reads its settings anew."""
    import uvicorn

    from .logs import configure_logging
    from .protocol import buffered_protocol

    refuse_open_exposure(settings)
    configure_logging(settings.log_level, settings.log_format)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        # httptools, with a deadline on request heads (a partial: workers get it pickled)
        "http": functools.partial(
            buffered_protocol, head_timeout=settings.header_timeout.total_seconds()
        ),
        "loop": "uvloop",
        "access_log": False,  # gateway.observe writes the access log
        "log_config": None,  # configure_logging did
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": settings.shutdown_grace.total_seconds(),
        # Longer than the clients' and proxies' own (nginx keeps idle upstream connections
        # 60 s, httpx 5 s): a connection the gateway closes just as a client reuses it fails
        # that request, and a POST or PATCH is not retried.
        "timeout_keep_alive": settings.keep_alive_timeout.total_seconds(),
    }
    with multiprocess_metrics(settings.workers):
        if settings.workers == 1:
            uvicorn.run(serving_app(settings), **options)
            return
        serving_app(settings)  # refuses a broken tokens file once, before any worker starts
        for name, value in overrides.items():
            os.environ[f"GATEWAY_{name.upper()}"] = str(value)
        uvicorn.run("gateway.server:worker_app", factory=True, workers=settings.workers, **options)


def worker_app() -> "FastAPI":
    """The app of one worker process of `gateway serve --workers N`."""
    from .logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return serving_app(settings)


def serving_app(settings: Settings) -> "FastAPI":
    import os as _os
    import sys as _sys

    if _os.environ.get("XSWITCH"):
        _sys.setswitchinterval(float(_os.environ["XSWITCH"]))
    from .app import create_app
    from .tuning import tune_malloc

    tune_malloc(keep_freed_heap=settings.backend == "local")
    try:
        return create_app(settings, handle_signals=True)
    except TokensFileError as exc:
        sys.exit(f"gateway: the tokens file cannot be used: {exc}")


@contextlib.contextmanager
def multiprocess_metrics(workers: int) -> Iterator[None]:
    """Give the workers one folder for their metrics (prometheus-client's multiprocess mode,
    read when a worker first imports it): the one in PROMETHEUS_MULTIPROC_DIR, emptied of an
    earlier run's values, or else a temporary one for this run."""
    # Imported before the variable is set below: with several workers, this process is only
    # their supervisor and keeps no metrics of its own.
    from .metrics import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        yield
    elif workers > 1:
        with tempfile.TemporaryDirectory(prefix="gateway-metrics-") as folder_name:
            os.environ[MULTIPROC_ENV] = folder_name
            try:
                yield
            finally:
                del os.environ[MULTIPROC_ENV]
    else:
        yield


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may well resolve to a public address


def refuse_open_exposure(settings: Settings) -> None:
    """Without tokens anyone can read, write and delete: only on loopback, unless asked."""
    if settings.tokens_file or is_loopback(settings.host):
        return
    if settings.allow_anonymous:
        print(
            f"gateway: serving {settings.host} without tokens (--allow-anonymous): anyone who "
            "can reach it may read, write and delete every object.",
            file=sys.stderr,
        )
        return
    sys.exit(
        f"gateway: refusing to listen on {settings.host} without tokens: anyone who can reach "
        "it could read, write and delete every object.\n"
        "  Either give it tokens: `gateway token create --scopes read,write,delete,list "
        "--file tokens.json`, then --tokens-file tokens.json (GATEWAY_TOKENS_FILE),\n"
        "  or listen on loopback only: --host 127.0.0.1,\n"
        "  or serve everyone on purpose: --allow-anonymous (GATEWAY_ALLOW_ANONYMOUS=true)."
    )
