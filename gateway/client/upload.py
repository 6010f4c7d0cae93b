"""`gateway upload PATH...`: files into the gateway over tus, one after the other.

Each upload's URL is kept in a state file named by a fingerprint of the file (its absolute
path, size and modification time) and of its target, so that the same command run again
after Ctrl-C, a kill or a lost connection asks the gateway how far the upload got and sends
the rest. The SHA-256 of the whole file, taken as the gateway acknowledges its bytes, is
checked against the stored object's at the end.
"""

import argparse
import hashlib
import mimetypes
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from . import ExitCode, tus
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


@dataclass(frozen=True)
class Target:
    path: Path
    metadata: dict[str, str]


def targets(paths: list[Path], key: str | None, prefix: str) -> list[Target]:
    found = []
    for path in paths:
        metadata = {"filename": path.name}
        if key is not None:
            metadata["key"] = key
        elif prefix:
            metadata["prefix"] = prefix
        content_type, _ = mimetypes.guess_type(path.name)
        if content_type:
            metadata["filetype"] = content_type  # the name tus clients use; the gateway takes it
        found.append(Target(path, metadata))
    return found


def run(args: argparse.Namespace) -> ExitCode:
    output = Output(args.quiet)
    first_failure = ExitCode.OK
    try:
        with Connection(args.url, args.token) as conn, output.running():
            for target in targets(args.paths, args.key, args.prefix):
                try:
                    with FileUpload(conn, target, args, output) as upload:
                        upload.run()
                except (ClientError, httpx.HTTPError) as exc:
                    error = unreachable(exc) if isinstance(exc, httpx.HTTPError) else exc
                    output.error(f"{target.path}: {error}")
                    first_failure = first_failure or error.code
    except KeyboardInterrupt:
        output.error("interrupted: run the same command again to go on where it stopped")
        return ExitCode.INTERRUPTED
    return first_failure


class FileUpload:
    def __init__(
        self, conn: Connection, target: Target, args: argparse.Namespace, output: Output
    ) -> None:
        self.conn, self.target, self.output = conn, target, output
        self.chunk_size: int = args.chunk_size
        self.retry = Retry(args.retries)
        self.throttle = Throttle(args.limit_rate)
        try:
            self.fd = os.open(target.path, os.O_RDONLY)
        except OSError as exc:
            raise ClientError(f"cannot read it: {exc.strerror}", ExitCode.LOCAL) from None
        stat = os.fstat(self.fd)
        self.size = stat.st_size
        fingerprint = [conn.base, str(target.path.resolve()), self.size, stat.st_mtime_ns]
        self.state = StateFile("uploads", [*fingerprint, target.metadata])
        self.digest = hashlib.sha256()
        self.hashed = 0  # the digest covers the file's bytes up to here

    def __enter__(self) -> "FileUpload":
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def run(self) -> None:
        upload = self.begin()
        upload = self.send(upload)
        self.finish(upload)

    def begin(self) -> tus.Upload:
        saved = self.state.load()
        if saved:
            try:
                upload = self.retry.call(lambda: tus.status(self.conn, str(saved["url"])))
                if upload.length == self.size:
                    self.output.note(
                        f"resuming {self.target.path.name} at {human(upload.offset)}"
                        f" of {human(self.size)}"
                    )
                    return upload
            except tus.Gone:
                pass
            self.state.remove()  # gone, expired, or not this file's
        upload = self.retry.call(lambda: tus.create(self.conn, self.size, self.target.metadata))
        self.state.save({"url": upload.url, "path": str(self.target.path), "at": time.time()})
        return upload

    def send(self, upload: tus.Upload) -> tus.Upload:
        progress = self.output.progress
        bar = progress.add_task(self.target.path.name, total=self.size, completed=upload.offset)

        def sent(size: int) -> None:
            self.throttle(size)
            progress.advance(bar, size)

        stale = False  # after a failure: ask the gateway where the upload stands
        while stale or not upload.complete:
            try:
                if stale:
                    upload, stale = tus.status(self.conn, upload.url), False
                    progress.update(bar, completed=upload.offset)
                    continue
                chunk = self.read(upload.offset, min(self.chunk_size, self.size - upload.offset))
                after = tus.patch(self.conn, upload, chunk, sent)
            except (httpx.TransportError, tus.Busy, tus.Damaged) as problem:
                self.retry.wait(problem)
                stale = True
                continue
            except ClientError as problem:
                if problem.code != ExitCode.UNAVAILABLE:
                    raise
                self.retry.wait(problem)
                stale = True
                continue
            except tus.Gone:
                self.state.remove()
                raise ClientError(
                    "the upload was removed on the gateway (expired?): run again to start over",
                    ExitCode.NOT_FOUND,
                ) from None
            self.hash(chunk, upload.offset, after.offset)
            upload = after
            self.retry.reset()
            progress.update(bar, completed=upload.offset)
        return upload

    def finish(self, upload: tus.Upload) -> None:
        if upload.key is None:
            url = upload.url
            upload = self.retry.call(lambda: tus.status(self.conn, url))
        self.state.remove()
        if upload.key is None:
            raise ClientError(
                "the gateway did not say where it stored the file", ExitCode.UNAVAILABLE
            )
        self.catch_up(self.size)
        mine = self.digest.hexdigest()
        key = upload.key
        stored = upload.sha256 or self.retry.call(lambda: self.stored_sha256(key))
        if stored is None:
            self.output.note(f"{upload.key}: this token may not read it back; SHA-256 not verified")
        elif stored != mine:
            raise ClientError(
                f"{upload.key} was stored with SHA-256 {stored}, but the file's is {mine}",
                ExitCode.CHECKSUM,
            )
        self.output.result(f"{self.target.path} -> {upload.key}  {human(self.size)}  sha256:{mine}")

    def stored_sha256(self, key: str) -> str | None:
        response = self.conn.http.head(self.conn.object_url(key))
        if response.status_code == 403:
            return None
        if response.status_code != 200:
            raise refusal(response, f"checking {key}")
        sha256: str | None = response.headers.get("x-checksum-sha256")
        return sha256

    def read(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self.fd, size, offset)
        except OSError as exc:
            raise ClientError(f"cannot read it: {exc.strerror}", ExitCode.LOCAL) from None
        if len(data) != size:
            raise ClientError("the file shrank while it was being uploaded", ExitCode.LOCAL)
        return data

    def hash(self, chunk: bytes, start: int, end: int) -> None:
        """Take in the bytes the gateway acknowledged: those of `chunk` before `end`."""
        if self.hashed > start:  # the gateway went back (it never should): start over
            self.digest, self.hashed = hashlib.sha256(), 0
        self.catch_up(start)
        self.digest.update(memoryview(chunk)[: max(0, end - start)])
        self.hashed = max(self.hashed, min(end, start + len(chunk)))

    def catch_up(self, offset: int) -> None:
        """Hash the file up to `offset`: the part an earlier run sent."""
        while self.hashed < offset:
            block = self.read(self.hashed, min(1 << 20, offset - self.hashed))
            self.digest.update(block)
            self.hashed += len(block)
