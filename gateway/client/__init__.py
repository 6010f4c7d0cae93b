"""`gateway upload` and `gateway download`: the gateway's command-line client.

This module only declares the commands; the work is in `upload.py` and `download.py`,
imported when a command runs, so that `gateway serve` needs neither httpx nor rich.
"""

import argparse
import os
import sys
from enum import IntEnum
from pathlib import Path


class ExitCode(IntEnum):
    OK = 0
    LOCAL = 1
    USAGE = 2  # argparse's own
    REFUSED = 3
    NOT_FOUND = 4
    CHECKSUM = 5
    UNAVAILABLE = 6
    INTERRUPTED = 130  # 128 + SIGINT, as shells report it


EXIT_CODES = """\
exit codes:
  0    done: every file transferred and its SHA-256 verified
  1    a local problem: a file could not be read or written, or the
       client extra is not installed
  2    bad arguments
  3    the gateway refused: no or a wrong token (401), not allowed (403),
       a bad key (400), too large (413)
  4    no such object (404), or the upload was removed on the gateway
  5    SHA-256 mismatch: what arrived is not what was sent (the partial
       download is removed)
  6    the gateway could not be reached, or failed (5xx): running the same
       command later may help
  130  interrupted (Ctrl-C): running the same command again goes on where
       it stopped

environment: GATEWAY_URL and GATEWAY_TOKEN stand in for --url and --token.
Unfinished uploads are remembered in $XDG_CACHE_HOME/gateway (~/.cache/gateway)."""

DEFAULT_URL = "http://127.0.0.1:8000"


def _size(text: str) -> int:
    from pydantic import ByteSize, TypeAdapter, ValidationError

    try:
        size = int(TypeAdapter(ByteSize).validate_python(text))
    except ValidationError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 8MiB)") from None
    if size <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return size


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"not an http:// or https:// URL: {text!r}")
    return text


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        type=_url,
        default=os.environ.get("GATEWAY_URL", DEFAULT_URL),
        help=f"the gateway (GATEWAY_URL; default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("GATEWAY_TOKEN"),
        help="bearer token (GATEWAY_TOKEN, which keeps it out of the process list)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument(
        "--limit-rate",
        type=_size,
        metavar="SIZE",
        help="send or receive at most SIZE bytes a second (e.g. 500KiB)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=5,
        metavar="N",
        help="tries again N times when the connection fails (default 5)",
    )


def add_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    upload = commands.add_parser(
        "upload",
        help="upload files (resumable: run the same command again after a failure)",
        description="Upload files over the gateway's resumable uploads (tus). Interrupted, "
        "the same command carries on where it stopped. Each object's SHA-256 is checked "
        "against the file's.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    upload.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    target = upload.add_mutually_exclusive_group()
    target.add_argument("--key", help="the object's key (one PATH only)")
    target.add_argument("--prefix", default="", help="keys are PREFIX + each file's name")
    upload.add_argument(
        "--chunk-size",
        type=_size,
        default=8 * 1024 * 1024,
        metavar="SIZE",
        help="bytes per request (default 8MiB): what an interruption may cost",
    )
    _common_flags(upload)
    upload.set_defaults(handler=_run_upload)

    download = commands.add_parser(
        "download",
        help="download an object (resumable: run the same command again after a failure)",
        description="Download an object into PATH (default: the last part of its key, here). "
        "Bytes go to PATH.part first, renamed to PATH once the SHA-256 matches; an "
        "interrupted download carries on from PATH.part, unless the object changed since.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    download.add_argument("key", metavar="KEY")
    download.add_argument("path", nargs="?", type=Path, metavar="PATH", help="a file or a folder")
    _common_flags(download)
    download.set_defaults(handler=_run_download)


def _run_upload(args: argparse.Namespace) -> None:
    if args.key is not None and len(args.paths) > 1:
        print(
            "gateway upload: --key takes one PATH only (use --prefix for several)", file=sys.stderr
        )
        sys.exit(ExitCode.USAGE)
    _run("upload", args)


def _run_download(args: argparse.Namespace) -> None:
    _run("download", args)


def _run(command: str, args: argparse.Namespace) -> None:
    try:
        from . import download, upload
    except ImportError as exc:
        print(
            f"gateway {command} needs the client extra: pip install 'gateway[client]' ({exc})",
            file=sys.stderr,
        )
        sys.exit(ExitCode.LOCAL)
    run = upload.run if command == "upload" else download.run
    sys.exit(run(args))
