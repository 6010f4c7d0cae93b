"""The `gateway` command: `gateway serve` runs the server with flags that mirror the settings."""

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; a flag not given leaves the environment's value in place."""
    for name, field in Settings.model_fields.items():
        help_text = f"{field.description} (GATEWAY_{name.upper()})"
        if field.annotation is bool:
            parser.add_argument(
                _flag(name),
                dest=name,
                action="store_const",
                const=True,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                _flag(name),
                dest=name,
                default=argparse.SUPPRESS,
                metavar=name.upper(),
                help=help_text,
            )


def load_settings(overrides: dict[str, Any]) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_flag(str(error['loc'][0])) if error['loc'] else 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        sys.exit(f"gateway: invalid settings: {problems}")


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .logs import configure_logging

    overrides = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    settings = load_settings(overrides)
    configure_logging(settings.log_level, settings.log_format)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": "httptools",
        "loop": "uvloop",
        "access_log": False,  # gateway.observe writes the access log
        "log_config": None,  # configure_logging did
        "log_level": settings.log_level,
        "timeout_graceful_shutdown": settings.shutdown_grace.total_seconds(),
    }
    with multiprocess_metrics(settings.workers):
        if settings.workers == 1:
            uvicorn.run(_serving_app(settings), **options)
            return
        # Each worker is a fresh process that reads its settings from the environment.
        for name, value in overrides.items():
            os.environ[f"GATEWAY_{name.upper()}"] = str(value)
        uvicorn.run("gateway.cli:worker_app", factory=True, workers=settings.workers, **options)


def worker_app() -> "FastAPI":
    """The app of one worker process of `gateway serve --workers N`."""
    from .logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return _serving_app(settings)


def _serving_app(settings: Settings) -> "FastAPI":
    from .app import create_app
    from .tuning import limit_malloc_arenas

    limit_malloc_arenas()
    return create_app(settings, handle_signals=True)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the gateway")
    _add_setting_flags(serve_parser)
    serve_parser.set_defaults(handler=serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)
