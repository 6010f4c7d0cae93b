"""The `gateway` command: `gateway serve` runs the server with flags that mirror the settings."""

import argparse
import sys
from typing import Any

from pydantic import ValidationError

from .settings import Settings


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

    from .app import create_app
    from .tuning import tune_malloc

    overrides = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    settings = load_settings(overrides)
    tune_malloc(mmap_threshold=4 * 1024 * 1024 if settings.backend == "s3" else None)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=30,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the gateway")
    _add_setting_flags(serve_parser)
    serve_parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve_parser.set_defaults(handler=serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)
