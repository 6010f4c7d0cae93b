"""CORS for browser apps on the origins of `GATEWAY_CORS_ORIGINS`.

Starlette's CORSMiddleware matches request and response header names exactly, while user
metadata travels in `X-Meta-<name>` headers of any name. So preflights may ask for any
`X-Meta-*` header besides the fixed list, and a response's own `X-Meta-*` headers are added
to the ones it exposes. Tokens travel in the Authorization header, never in cookies, so
credentialed requests are not needed and not allowed.
"""

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Send

META = "x-meta-"

METHODS = ["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS"]

REQUEST_HEADERS = [
    "Authorization",
    "Content-Type",
    "Content-MD5",
    "X-Checksum-SHA256",
    "If-None-Match",
    "If-Match",
    "If-Modified-Since",
    "If-Unmodified-Since",
    "If-Range",
    "Range",
    "Tus-Resumable",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Checksum",
    "Upload-Defer-Length",
    "Upload-Concat",
    "X-HTTP-Method-Override",
    "X-Requested-With",
]

EXPOSED_HEADERS = [
    "ETag",
    "Location",
    "Accept-Ranges",
    "Content-Range",
    "Content-Disposition",
    "Content-Length",
    "Last-Modified",
    "X-Checksum-SHA256",
    "X-Object-Key",
    "WWW-Authenticate",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Expires",
    "Upload-Metadata",
    "Upload-Defer-Length",
    "Upload-Concat",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
]


class GatewayCORS(CORSMiddleware):
    def __init__(self, app: ASGIApp, origins: list[str]):
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=METHODS,
            allow_headers=REQUEST_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=3600,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        asked = request_headers.get("access-control-request-headers")
        if asked is None:
            return super().preflight_response(request_headers)
        names = [name.strip().lower() for name in asked.split(",") if name.strip()]
        metas = [name for name in names if name.startswith(META) and len(name) > len(META)]
        others = [name for name in names if name not in metas]
        headers = request_headers.mutablecopy()
        headers["access-control-request-headers"] = ", ".join(others)
        if not others:
            del headers["access-control-request-headers"]
        response = super().preflight_response(Headers(raw=headers.raw))
        if metas and response.status_code == 200:
            allowed = response.headers["access-control-allow-headers"]
            response.headers["access-control-allow-headers"] = ", ".join([allowed, *metas])
        return response

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        if message["type"] == "http.response.start":
            metas = [name for name in MutableHeaders(scope=message) if name.startswith(META)]
            if metas:
                send = _exposing(send, metas)
        await super().send(message, send, request_headers)


def _exposing(send: Send, names: list[str]) -> Send:
    async def send_exposing(message: Message) -> None:
        headers = MutableHeaders(scope=message)
        exposed = headers.get("access-control-expose-headers")
        if exposed is not None:
            headers["access-control-expose-headers"] = ", ".join([exposed, *names])
        await send(message)

    return send_exposing
