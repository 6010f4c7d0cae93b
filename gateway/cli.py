"""The `gateway` command: `gateway serve` runs the server with flags that mirror the settings;
`gateway token create` makes a bearer token and its tokens-file entry; `gateway cleanup`
removes what unfinished uploads left behind; `gateway upload` and `gateway download` move
files in and out of a running gateway."""

import argparse
import hashlib
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import client
from .settings import Settings
from .tokens import SCOPES, TokenEntry, TokensFileError, append_entry


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; a flag not given leaves the environment's value in place."""
    for name, field in Settings.model_fields.items():
        help_text = f"{field.description} (GATEWAY_{name.upper()})"
        if field.annotation is bool:
            # `--ui` and `--no-ui`: some switches are on by default.
            parser.add_argument(
                _flag(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
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
    from .server import serve as run

    overrides = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    run(load_settings(overrides), overrides)


def cleanup(args: argparse.Namespace) -> None:
    """What the server does at start and then periodically, once, for cron jobs: abandoned
    temporary files and multipart uploads, and expired resumable uploads."""
    import asyncio

    from .storage import open_storage

    overrides = {name: value for name, value in vars(args).items() if name in Settings.model_fields}
    storage = open_storage(load_settings(overrides))

    async def run() -> int:
        async with storage:  # opening a backend sweeps what crashed writers left
            return await storage.uploads.sweep() if storage.uploads else 0

    print(f"gateway: removed {asyncio.run(run())} expired resumable upload(s)")


def create_token(args: argparse.Namespace) -> None:
    scopes = [scope.strip() for scope in args.scopes.split(",") if scope.strip()]
    if not scopes or set(scopes) - set(SCOPES):
        sys.exit(f"gateway: --scopes takes a comma-separated list of: {', '.join(SCOPES)}")
    token = "gw_" + secrets.token_urlsafe(32)
    entry: dict[str, object] = (
        {"token": token}
        if args.clear
        else {"token_sha256": hashlib.sha256(token.encode()).hexdigest()}
    )
    entry |= {"scopes": scopes, "prefix": args.prefix}
    if args.name:
        entry["name"] = args.name
    try:
        TokenEntry.model_validate(entry)
    except ValidationError as exc:
        sys.exit(f"gateway: {'; '.join(error['msg'] for error in exc.errors())}")
    if args.file:
        try:
            append_entry(args.file, entry)
        except (OSError, ValueError, TokensFileError) as exc:
            sys.exit(f"gateway: cannot add the token to {args.file}: {exc}")
    print(token)
    print(json.dumps(entry))
    where = f"It was added to {args.file}" if args.file else "Add the entry to the tokens file"
    print(
        f"The token is shown once: keep it. {where}; a running gateway picks it up by itself.",
        file=sys.stderr,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the gateway")
    _add_setting_flags(serve_parser)
    serve_parser.set_defaults(handler=serve)

    token_parser = commands.add_parser("token", help="manage bearer tokens")
    token_commands = token_parser.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser(
        "create",
        help="print a new token (first line) and its tokens-file entry (second line)",
    )
    create.add_argument("--scopes", required=True, help=f"comma-separated, of: {', '.join(SCOPES)}")
    create.add_argument("--prefix", default="", help="the token reaches only keys starting so")
    create.add_argument("--name", help="a label for the entry")
    create.add_argument(
        "--clear",
        action="store_true",
        help="put the token itself in the entry, not its SHA-256",
    )
    create.add_argument("--file", type=Path, help="also add the entry to this tokens file")
    create.set_defaults(handler=create_token)

    cleanup_parser = commands.add_parser(
        "cleanup", help="remove what expired or crashed uploads left behind, then exit"
    )
    _add_setting_flags(cleanup_parser)
    cleanup_parser.set_defaults(handler=cleanup)

    client.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.handler(args)
