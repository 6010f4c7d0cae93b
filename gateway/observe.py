"""What operators watch, for every request: its id, its metrics and its access-log line.

A pure ASGI middleware, not Starlette's BaseHTTPMiddleware, so that bodies stream through
untouched. Uploads arrive at about 1 GB/s: per chunk it only adds a length to an int, and
the byte counters are bumped every few MiB and at the end.

The route in metrics and logs is the matched route's template (`/objects/{key}`), never the
path, so that keys cannot blow up the number of series; a path no route matches is
`unmatched`. Query strings and headers are never logged: they may hold tokens or
presigned-URL signatures.
"""

import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .lifecycle import Lifecycle
from .logs import REQUEST_ID
from .protocol import READ_INTO, ZERO_COPY

access_log = logging.getLogger("gateway.access")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:@+/=-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"})
COUNT_EVERY = 8 * 1024 * 1024  # bytes between two bumps of the byte counters
UNMATCHED = "unmatched"
CLIENT_GONE = 499  # nginx's status for a request whose client left before the response


def note_keys(request: Request, keys: Iterable[str]) -> None:
    """Name the objects a request stored when its path does not (form uploads, tus)."""
    request.state.object_keys = list(keys)


def request_id(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's (or proxy's) X-Request-ID when it is short and plain, else a new one."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER:
            if _SANE_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return os.urandom(16).hex()


def is_upload(method: str, path: str) -> bool:
    if method == "PATCH":
        return path.startswith("/uploads/")
    return method in ("PUT", "POST") and path.startswith(("/objects", "/upload/", "/uploads/"))


class _Exchange:
    """One request's bytes and status, seen through its receive and send."""

    __slots__ = (
        *("_receive", "_send", "_readinto", "_counted_in", "_counted_out"),
        *("client_gone", "complete", "header", "in_", "out", "status"),
    )

    def __init__(self, receive: Receive, send: Send, request_id: str) -> None:
        self._receive, self._send = receive, send
        self._readinto: Callable[[memoryview], Awaitable[int]] | None = None
        self.header = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        self.in_ = self.out = self._counted_in = self._counted_out = 0
        self.status = 0
        self.complete = self.client_gone = False

    async def receive(self) -> Message:
        message = await self._receive()
        body = message.get("body")
        if body:
            self._received(len(body))
        elif message["type"] == "http.disconnect" and not self.complete:
            self.client_gone = True
        return message

    def watch_readinto(self, scope: Scope) -> None:
        """Count what the READ_INTO extension (gateway.protocol) reads, too."""
        extensions = scope.get("extensions") or {}
        if READ_INTO in extensions:
            self._readinto = extensions[READ_INTO]["readinto"]
            scope["extensions"] = {**extensions, READ_INTO: {"readinto": self.readinto}}

    async def readinto(self, view: memoryview) -> int:
        assert self._readinto is not None
        try:
            filled = await self._readinto(view)
        except ClientDisconnect:
            if not self.complete:
                self.client_gone = True
            raise
        self._received(filled)
        return filled

    def _received(self, size: int) -> None:
        self.in_ += size
        if self.in_ - self._counted_in >= COUNT_EVERY:
            metrics.BYTES_RECEIVED.inc(self.in_ - self._counted_in)
            self._counted_in = self.in_

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            self.out += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
            elif self.out - self._counted_out >= COUNT_EVERY:
                metrics.BYTES_SENT.inc(self.out - self._counted_out)
                self._counted_out = self.out
        elif message["type"] == "http.response.start":
            self.status = message["status"]
            message["headers"] = [*message.get("headers", ()), self.header]
        try:
            await self._send(message)
        except OSError:
            self.client_gone = True
            raise
        if message["type"] == ZERO_COPY:
            count = message.get("count") or 0
            sent = message.get("sent", count)  # how much the server got out
            self.out += sent
            if sent < count:
                self.client_gone = True

    def flush(self) -> None:
        if self.in_ > self._counted_in:
            metrics.BYTES_RECEIVED.inc(self.in_ - self._counted_in)
        if self.out > self._counted_out:
            metrics.BYTES_SENT.inc(self.out - self._counted_out)

    def final_status(self) -> int:
        """499 if the client left before the response was complete (whatever the app then
        answered into the void), else the status sent if the response went out whole, else
        500: the gateway gave up (a failure, or cut off at shutdown)."""
        if self.client_gone:
            return CLIENT_GONE
        return self.status if self.complete else 500


class Observe:
    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(scope["headers"])
        token = REQUEST_ID.set(rid)
        exchange = _Exchange(receive, send, rid)
        exchange.watch_readinto(scope)
        upload = is_upload(scope["method"], scope["path"])
        if upload:
            metrics.UPLOADS_IN_PROGRESS.inc()
        self.lifecycle.request_started()
        try:
            await self.app(scope, exchange.receive, exchange.send)
        finally:
            self.lifecycle.request_ended()
            if upload:
                metrics.UPLOADS_IN_PROGRESS.dec()
            self._record(scope, exchange, time.perf_counter() - started)
            REQUEST_ID.reset(token)

    def _record(self, scope: Scope, exchange: _Exchange, duration: float) -> None:
        route = getattr(scope.get("route"), "path_format", UNMATCHED)
        method = scope["method"] if scope["method"] in _METHODS else "other"
        status = exchange.final_status()
        exchange.flush()
        metrics.REQUESTS.labels(route, method, str(status)).inc()
        metrics.REQUEST_DURATION.labels(route, method).observe(duration)
        if access_log.isEnabledFor(logging.INFO):
            _log_access(scope, route, status, exchange, duration)


def _object_keys(scope: Scope) -> list[str]:
    noted: list[str] | None = scope.get("state", {}).get("object_keys")
    if noted:
        return noted
    params: dict[str, Any] = scope.get("path_params") or {}
    key = params.get("key") or params.get("filename")
    return [key] if isinstance(key, str) else []


def _log_access(
    scope: Scope, route: str, status: int, exchange: _Exchange, duration: float
) -> None:
    client = scope.get("client")
    fields: dict[str, object] = {
        "method": scope["method"],
        "route": route,
        "status": status,
        "bytes_in": exchange.in_,
        "bytes_out": exchange.out,
        "duration_s": round(duration, 6),
        "client": client[0] if client else None,
    }
    message = "%s %s %d %.3fs in=%d out=%d client=%s"
    args: list[object] = [scope["method"], route, status, duration, exchange.in_, exchange.out]
    args.append(fields["client"] or "-")
    keys = _object_keys(scope)
    if keys:
        fields["key"] = keys[0] if len(keys) == 1 else keys
        message += " key=%s"
        args.append(" ".join(json.dumps(key, ensure_ascii=False) for key in keys))
    access_log.info(message, *args, extra={"fields": fields})
