"""The local backend's index: one SQLite database that maps keys to blobs and metadata.

Keys are stored as UTF-8 BLOBs, so SQLite's memcmp ordering is the UTF-8 byte order that
listings promise, and a prefix's keys are exactly those in [prefix, prefix + b"\\xff")
(0xFF never occurs in UTF-8). The database runs in WAL mode with synchronous=FULL: a
committed row survives a crash, and several processes may share one data folder.

Every call runs on the index's own thread, so the event loop never waits on SQLite.
"""

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BackendError, PreconditionFailed

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key BLOB PRIMARY KEY,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    modified_ns INTEGER NOT NULL,
    filename TEXT,
    metadata TEXT NOT NULL
) WITHOUT ROWID;
-- blobs no longer referenced whose files may still exist (removed after the commit)
CREATE TABLE IF NOT EXISTS garbage (blob TEXT PRIMARY KEY) WITHOUT ROWID;
"""
_SELECT = (
    "SELECT key, blob, size, sha256, content_type, modified_ns, filename, metadata FROM objects"
)
_INSERT = (
    "INSERT OR REPLACE INTO objects"
    " (key, blob, size, sha256, content_type, modified_ns, filename, metadata)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SCAN_FROM = _SELECT + " WHERE key >= ? AND key < ? ORDER BY key LIMIT ?"
_SCAN_AFTER = _SELECT + " WHERE key > ? AND key < ? ORDER BY key LIMIT ?"


@dataclass(frozen=True)
class Row:
    key: bytes
    blob: str
    size: int
    sha256: str
    content_type: str
    modified_ns: int
    filename: str | None
    metadata: str  # JSON object

    @property
    def metadata_dict(self) -> dict[str, str]:
        value: dict[str, str] = json.loads(self.metadata)
        return value


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    prefixes: list[bytes]
    resume_after: bytes | None  # where the next page starts, if there is one


def upper_bound(prefix: bytes) -> bytes:
    """The least byte string greater than every UTF-8 string that starts with `prefix`."""
    return prefix + b"\xff"


class Index:
    def __init__(self, path: Path):
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-index")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, fn, *args)
        except sqlite3.Error as exc:
            raise BackendError("The object index failed.") from exc

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "index not opened"
        return self._db

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self.db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    async def get(self, key: str) -> Row | None:
        return await self._run(self._get, key.encode())

    def _get(self, key: bytes) -> Row | None:
        found = self.db.execute(_SELECT + " WHERE key = ?", (key,))
        values = found.fetchone()
        return Row(*values) if values else None

    async def put(self, row: Row, *, create_only: bool) -> str | None:
        """Make `row` current for its key; return the blob it replaced, if any."""
        return await self._run(self._put, row, create_only)

    def _put(self, row: Row, create_only: bool) -> str | None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            found = db.execute("SELECT blob FROM objects WHERE key = ?", (row.key,)).fetchone()
            if found and create_only:
                raise PreconditionFailed("An object with this key exists (If-None-Match: *).")
            db.execute(
                _INSERT,
                (
                    row.key,
                    row.blob,
                    row.size,
                    row.sha256,
                    row.content_type,
                    row.modified_ns,
                    row.filename,
                    row.metadata,
                ),
            )
            if found:
                db.execute("INSERT OR IGNORE INTO garbage (blob) VALUES (?)", found)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return found[0] if found else None

    async def delete(self, key: str) -> str | None:
        """Remove `key`; return its blob (now garbage), or None if there was no such key."""
        return await self._run(self._delete, key.encode())

    def _delete(self, key: bytes) -> str | None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            found = db.execute("DELETE FROM objects WHERE key = ? RETURNING blob", (key,))
            blob = found.fetchone()
            if blob:
                db.execute("INSERT OR IGNORE INTO garbage (blob) VALUES (?)", blob)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return blob[0] if blob else None

    async def garbage(self) -> list[str]:
        return await self._run(self._garbage)

    def _garbage(self) -> list[str]:
        return [blob for (blob,) in self.db.execute("SELECT blob FROM garbage")]

    async def forget_garbage(self, blob: str) -> None:
        await self._run(self.db.execute, "DELETE FROM garbage WHERE blob = ?", (blob,))

    async def references(self, blob: str) -> bool:
        found = await self._run(
            lambda: self.db.execute("SELECT 1 FROM objects WHERE blob = ?", (blob,)).fetchone()
        )
        return found is not None

    async def page(
        self, prefix: str, delimiter: str | None, after: bytes | None, limit: int
    ) -> Page:
        return await self._run(self._page, prefix.encode(), delimiter, after, limit)

    def _page(self, prefix: bytes, delimiter: str | None, after: bytes | None, limit: int) -> Page:
        """Up to `limit` entries (objects and rolled-up prefixes) after `after`, in order."""
        sep = delimiter.encode() if delimiter else None
        end = upper_bound(prefix)
        position = after if after is not None and after >= prefix else None
        rows: list[Row] = []
        prefixes: list[bytes] = []
        while len(rows) + len(prefixes) < limit:
            batch = self._scan(prefix, position, end, limit - len(rows) - len(prefixes))
            if not batch:
                return Page(rows, prefixes, None)
            for row in batch:
                cut = row.key.find(sep, len(prefix)) if sep else -1
                if cut >= 0:
                    common = row.key[: cut + len(sep or b"")]
                    prefixes.append(common)
                    position = upper_bound(common)
                    break  # skip the rest of this prefix with a new query
                rows.append(row)
                position = row.key
        assert position is not None
        more = self.db.execute(
            "SELECT 1 FROM objects WHERE key > ? AND key < ? LIMIT 1", (position, end)
        ).fetchone()
        return Page(rows, prefixes, position if more else None)

    def _scan(self, prefix: bytes, after: bytes | None, end: bytes, limit: int) -> list[Row]:
        if after is None:
            found = self.db.execute(_SCAN_FROM, (prefix, end, limit))
        else:
            found = self.db.execute(_SCAN_AFTER, (after, end, limit))
        return [Row(*values) for values in found]
