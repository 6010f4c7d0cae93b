"""`gateway download KEY [PATH]`: an object into a file, resumable across runs.

Bytes go to PATH.part, and the object's ETag to a state file, so that the next run asks
only for the rest (`Range`), with `If-Range` so that an object changed since comes whole
instead. Once PATH.part's SHA-256 matches the object's, PATH.part becomes PATH.
"""

import argparse
import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx

from . import ExitCode
from .common import (
    ClientError,
    Connection,
    Output,
    Retry,
    StateFile,
    Throttle,
    human,
    refusal,
    unreachable,
)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def destination(key: str, path: Path | None) -> Path:
    name = key.rsplit("/", 1)[-1]
    if path is None:
        return Path(name)
    return path / name if path.is_dir() else path


def run(args: argparse.Namespace) -> ExitCode:
    output = Output(args.quiet)
    target = destination(args.key, args.path)
    try:
        with Connection(args.url, args.token) as conn, output.running():
            Download(conn, args.key, target, args, output).run()
    except (ClientError, httpx.HTTPError) as exc:
        error = unreachable(exc) if isinstance(exc, httpx.HTTPError) else exc
        output.error(f"{args.key}: {error}")
        return error.code
    except KeyboardInterrupt:
        output.error("interrupted: run the same command again to go on where it stopped")
        return ExitCode.INTERRUPTED
    return ExitCode.OK


class Restart(Exception):
    """What PATH.part holds cannot be continued: start again from zero."""


def _after_overlap(blocks: Iterator[bytes], held: bytes) -> Iterator[bytes]:
    """The blocks of a response that starts with the last byte already held, without it."""
    for block in blocks:
        if block:
            if block[:1] != held:
                raise Restart()
            yield block[1:]
            break
    yield from blocks


class Download:
    def __init__(
        self, conn: Connection, key: str, target: Path, args: argparse.Namespace, output: Output
    ) -> None:
        self.conn, self.key, self.target, self.output = conn, key, target, output
        self.part = target.with_name(target.name + ".part")
        self.state = StateFile("downloads", [conn.base, key, str(self.part.resolve())])
        self.retry = Retry(args.retries)
        self.throttle = Throttle(args.limit_rate)
        self.digest = hashlib.sha256()
        self.hashed = 0  # the digest covers PATH.part up to here
        self.bar = output.progress.add_task(target.name, total=None)

    def run(self) -> None:
        while True:
            try:
                expected = self.fetch()
                break
            except Restart:
                self.forget()
            except httpx.TransportError as problem:
                self.retry.wait(problem)
            except ClientError as problem:
                if problem.code != ExitCode.UNAVAILABLE:
                    raise
                self.retry.wait(problem)
        self.finish(expected)

    def resumable(self) -> tuple[int, str | None]:
        """How many bytes PATH.part holds that can be continued, and of which version."""
        saved = self.state.load() or {}
        with contextlib.suppress(FileNotFoundError):
            if isinstance(saved.get("etag"), str):
                return self.part.stat().st_size, saved["etag"]
        return 0, None

    def fetch(self) -> str | None:
        """Get what PATH.part lacks; the object's SHA-256 as the gateway gives it."""
        have, etag = self.resumable()
        headers = {}
        if have and etag:
            # From the last byte held rather than the next: always satisfiable, even when
            # PATH.part is complete, and that byte must match the one already here.
            headers = {"Range": f"bytes={have - 1}-", "If-Range": etag}
        with self.conn.http.stream("GET", self.conn.object_url(self.key), headers=headers) as got:
            blocks = got.iter_bytes(256 * 1024)
            if got.status_code == 206 and have:
                total = self.range_total(got, have - 1)
                blocks = _after_overlap(blocks, self.byte_at(have - 1))
                self.output.note(f"resuming {self.target.name} at {human(have)}")
            elif got.status_code == 200:
                if have:
                    self.output.note(f"{self.key} changed since: downloading it again")
                have, total = 0, int(got.headers["content-length"])
            elif got.status_code == 416:
                raise Restart()
            else:
                raise refusal(got, "downloading")
            self.state.save({"etag": got.headers.get("etag"), "size": total})
            self.output.progress.update(self.bar, total=total, completed=have)
            self.catch_up(have)
            with self.open_part(have) as out:
                for block in blocks:
                    self.write(out, block)
        if self.hashed != total:
            raise ClientError("the download ended early", ExitCode.UNAVAILABLE)
        sha256: str | None = got.headers.get("x-checksum-sha256")
        return sha256

    @staticmethod
    def range_total(response: httpx.Response, start: int) -> int:
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if not match or int(match[1]) != start:
            raise ClientError("the gateway sent another range than asked for", ExitCode.UNAVAILABLE)
        return int(match[3])

    def byte_at(self, offset: int) -> bytes:
        with self.part.open("rb") as part:
            return os.pread(part.fileno(), 1, offset)

    def open_part(self, have: int) -> BinaryIO:
        try:
            out = self.part.open("r+b" if have else "wb")
            out.truncate(have)
            out.seek(have)
        except OSError as exc:
            raise ClientError(f"cannot write {self.part}: {exc.strerror}", ExitCode.LOCAL) from None
        return out

    def write(self, out: BinaryIO, block: bytes) -> None:
        try:
            out.write(block)
        except OSError as exc:
            raise ClientError(f"cannot write {self.part}: {exc.strerror}", ExitCode.LOCAL) from None
        self.digest.update(block)
        self.hashed += len(block)
        self.throttle(len(block))
        self.output.progress.advance(self.bar, len(block))

    def catch_up(self, offset: int) -> None:
        """Hash PATH.part up to `offset`: what an earlier run wrote."""
        if self.hashed > offset:
            self.digest, self.hashed = hashlib.sha256(), 0
        if self.hashed == offset:
            return
        with self.part.open("rb") as part:
            while self.hashed < offset:
                block = os.pread(part.fileno(), min(1 << 20, offset - self.hashed), self.hashed)
                self.digest.update(block)
                self.hashed += len(block)

    def forget(self) -> None:
        self.state.remove()
        self.part.unlink(missing_ok=True)
        self.digest, self.hashed = hashlib.sha256(), 0

    def finish(self, expected: str | None) -> None:
        mine = self.digest.hexdigest()
        if expected is None:
            self.output.note(f"{self.key}: the gateway sent no SHA-256; not verified")
        elif expected != mine:
            self.forget()
            raise ClientError(
                f"the object's SHA-256 is {expected}, but what arrived has {mine}"
                " (the partial file was removed)",
                ExitCode.CHECKSUM,
            )
        self.part.replace(self.target)
        self.state.remove()
        self.output.result(f"{self.key} -> {self.target}  {human(self.hashed)}  sha256:{mine}")
