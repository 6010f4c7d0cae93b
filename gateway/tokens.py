"""Bearer tokens: the tokens file, what a token may do, and reloading the file while serving.

    {"tokens": [{"token": "<the token>", "scopes": ["read", "list"], "prefix": "tenant-a/"},
                {"token_sha256": "<hex>", "scopes": ["write"], "prefix": "inbox/", "name": "cam"}]}

Only SHA-256 digests of the tokens are kept in memory. A presented token is hashed and its
digest compared with every entry's in constant time, so neither the answer's timing nor an
early exit tells anything about a secret.
"""

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from .errors import Forbidden

log = logging.getLogger("gateway")

Scope = Literal["read", "write", "delete", "list"]
SCOPES: tuple[Scope, ...] = ("read", "write", "delete", "list")
CHECK_INTERVAL = 1.0  # seconds between looks at the file's mtime and size


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a token's scopes and key prefix (or one presigned key)."""

    name: str
    scopes: frozenset[Scope]
    prefix: str = ""
    only_key: str | None = None

    def require(self, scope: Scope, key: str | None = None) -> None:
        """Forbidden unless this principal holds `scope` and `key` (if given) is its to touch."""
        if scope not in self.scopes:
            raise Forbidden(f"This token does not have the {scope!r} scope.")
        if key is not None and not self.reaches(key):
            raise Forbidden(self._outside())

    def require_prefix(self, scope: Scope, prefix: str) -> None:
        """As `require`, for every key that starts with `prefix` (listings, upload prefixes)."""
        self.require(scope)
        if self.only_key is not None or not prefix.startswith(self.prefix):
            raise Forbidden(self._outside())

    def reaches(self, key: str) -> bool:
        if self.only_key is not None:
            return key == self.only_key
        return key.startswith(self.prefix)

    def _outside(self) -> str:
        if self.only_key is not None:
            return "This presigned URL is for another key."
        return f"This token may only reach keys that start with {self.prefix!r}."


OPEN = Principal("anonymous", frozenset(SCOPES))


class TokenEntry(BaseModel):
    # Unknown fields are refused: a misspelt "prefix" must not silently grant every key.
    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr | None = None
    token_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    scopes: list[Scope]
    prefix: str = Field("", max_length=1024)
    name: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _one_secret(self) -> "TokenEntry":
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of `token` and `token_sha256`")
        if self.token is not None and not self.token.get_secret_value():
            raise ValueError("`token` is empty")
        if self.prefix.startswith("/"):
            raise ValueError("`prefix` is the start of a key, which never begins with '/'")
        return self

    def digest(self) -> bytes:
        if self.token is not None:
            return digest(self.token.get_secret_value())
        assert self.token_sha256 is not None
        return bytes.fromhex(self.token_sha256)


class TokensFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[TokenEntry]


class TokensFileError(Exception):
    """The tokens file cannot be used; the message never holds a token."""


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


Stamp = tuple[int, int, int] | None  # inode, size, mtime in ns; None: no file


def stamp(path: Path) -> Stamp:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def parse(text: str) -> list[tuple[bytes, Principal]]:
    try:
        tokens = TokensFile.model_validate_json(text).tokens
    except ValidationError as exc:
        # Only where and what, never the input: the input may be a token.
        raise TokensFileError(
            "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'file'}: {error['msg']}"
                for error in exc.errors(include_input=False, include_url=False)
            )
        ) from None
    table: list[tuple[bytes, Principal]] = []
    for number, entry in enumerate(tokens, 1):
        secret = entry.digest()
        if any(hmac.compare_digest(secret, seen) for seen, _ in table):
            raise TokensFileError(f"tokens.{number - 1}: the same token appears twice")
        name = entry.name or f"token #{number}"
        table.append((secret, Principal(name, frozenset(entry.scopes), entry.prefix)))
    return table


def read(path: Path) -> tuple[Stamp, list[tuple[bytes, Principal]]]:
    seen = stamp(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokensFileError(f"no tokens file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokensFileError(f"cannot read {path}: {exc.__class__.__name__}") from None
    try:
        return seen, parse(text)
    except TokensFileError as exc:
        raise TokensFileError(f"{path}: {exc}") from None


class TokenStore:
    """The tokens of one file. `refresh()` (on requests) reloads it when it changed, at most
    one look per second; `reload()` (on SIGHUP) always does. A file that cannot be used
    keeps the previous tokens in place, and the reason goes to the log."""

    def __init__(self, path: Path):
        self._stamp, self._table = read(path)
        self.path = path
        self._checked = time.monotonic()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._table)

    def lookup(self, token: str) -> Principal | None:
        presented = digest(token)
        found = None
        for secret, principal in self._table:  # every entry, no early exit
            if hmac.compare_digest(secret, presented):
                found = principal
        return found

    async def refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        if await asyncio.to_thread(stamp, self.path) != self._stamp:
            await self.reload("the file changed")

    async def reload(self, why: str) -> None:
        async with self._lock:
            try:
                self._stamp, self._table = await asyncio.to_thread(read, self.path)
            except TokensFileError as exc:
                # Remembered, so that a broken file is reported once, not on every look.
                self._stamp = await asyncio.to_thread(stamp, self.path)
                log.warning(
                    "tokens file not reloaded (%s), keeping the previous %d token(s): %s",
                    why,
                    len(self._table),
                    exc,
                )
                return
        log.info("tokens file reloaded (%s): %d token(s)", why, len(self._table))

    @contextlib.contextmanager
    def reloading_on_sighup(self) -> Iterator[None]:
        """While inside, SIGHUP reloads the file (and no longer ends the process)."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        except (NotImplementedError, RuntimeError, ValueError):
            # Not the main thread (an app run inside tests), or no signals on this platform.
            yield
            return
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def append_entry(path: Path, entry: dict[str, object]) -> None:
    """Add `entry` to the tokens file at `path` (created if missing), replacing the file in
    one rename so that a running gateway never reads half of it."""
    tokens: list[object] = []
    if path.exists():
        text = path.read_text(encoding="utf-8")
        parse(text)  # refuse to build on a broken file
        tokens = json.loads(text)["tokens"]
    tokens.append(entry)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"tokens": tokens}, out, indent=2)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    staging.replace(path)
