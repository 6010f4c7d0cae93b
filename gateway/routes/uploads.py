"""/uploads/: resumable uploads over tus 1.0.0 (creation, creation-with-upload,
creation-defer-length, termination, checksum, expiration), on any backend that has them.

Every answer, errors included, carries Tus-Resumable. Every request but OPTIONS needs a
token with the `write` scope for the upload's key: at creation the key comes from
Upload-Metadata, afterwards from the upload's stored state, so that one tenant can never
reach another's upload id. A POST with X-HTTP-Method-Override is taken for the method it
names (MethodOverride, installed by the app factory).
"""

import re
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import tus
from ..auth import OPENAPI_BEARER, authenticate, authorize
from ..deps import SettingsDep, StorageDep
from ..errors import BadRequest, GatewayError, NotFound, TooLarge, UnsupportedMediaType
from ..intake import client_buffers, declared_size, guess_type, limited
from ..metrics import tus_event
from ..problems import problem
from ..schemas import problems
from ..settings import Settings
from ..storage.base import Storage, Uploads, UploadSpec, UploadState
from ..tokens import Principal

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class TusRoute(APIRoute):
    """A route whose every response, problem responses included, says Tus-Resumable."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                response = await handler(request)
            except GatewayError as exc:
                response = problem(exc, request.url.path)
            response.headers["Tus-Resumable"] = tus.VERSION
            return response

        return answer


class MethodOverride:
    """tus's X-HTTP-Method-Override: a client that can only send POST (an old browser, a
    proxy that drops PATCH) names the method it means, and the server takes that one."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].startswith("/uploads/")
        ):
            wanted = Headers(scope=scope).get("x-http-method-override")
            if wanted is not None:
                method = wanted.strip().upper()
                if not _METHOD.match(method):
                    error = BadRequest("X-HTTP-Method-Override must name a method.")
                    response = problem(error, scope["path"])
                    response.headers["Tus-Resumable"] = tus.VERSION
                    await response(scope, receive, send)
                    return
                # In place rather than in a copy: the access log and the metrics then name
                # the method meant and the route it reached.
                scope["method"] = method
        await self.app(scope, receive, send)


_METHOD = re.compile(r"^[A-Z]{1,16}$")
router = APIRouter(tags=["resumable uploads"], route_class=TusRoute, dependencies=[OPENAPI_BEARER])
UPLOAD = "/uploads/{upload_id}"
# Every request but OPTIONS names the protocol's version (else 412, before the token is
# looked at); OPTIONS is how a client discovers the server, and needs no token.
TUS_VERSION: dict[str, Any] = {
    "parameters": [
        {
            "name": "Tus-Resumable",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "enum": [tus.VERSION]},
        }
    ]
}
# `{}` beside the bearer scheme: a token is optional (and then changes nothing)
PUBLIC: dict[str, Any] = {"security": [{}]}
PATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {tus.PATCH_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    },
    **TUS_VERSION,
}


def uploads_of(storage: Storage) -> Uploads:
    if storage.uploads is None:
        raise NotFound("This backend has no resumable uploads.")
    return storage.uploads


def state_headers(state: UploadState) -> dict[str, str]:
    headers = {"Upload-Offset": str(state.offset), "Upload-Expires": tus.expires(state.expires)}
    if state.object is not None:
        headers["X-Object-Key"] = state.object.key
    return headers


@router.options("/uploads/", status_code=200, response_class=Response, openapi_extra=PUBLIC)
@router.options(
    UPLOAD,
    status_code=200,
    response_class=Response,
    openapi_extra={
        **PUBLIC,
        "parameters": [
            {"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
    },
)
async def options(settings: SettingsDep) -> Response:
    """What this server supports of tus."""
    # 200 rather than tus's example 204: both are allowed, and some checkers expect 200.
    return Response(status_code=200, headers=tus.options_headers(int(settings.max_upload_bytes)))


@router.post(
    "/uploads/",
    status_code=201,
    response_class=Response,
    openapi_extra=PATCH_BODY,
    responses=problems(400, 401, 403, 412, 413, 460),
)
async def create(request: Request, storage: StorageDep, settings: SettingsDep) -> Response:
    """Create an upload (Upload-Length, or Upload-Defer-Length: 1), optionally with its first
    bytes as the body (Content-Type: application/offset+octet-stream)."""
    headers = request.headers
    tus.check_version(headers)
    await authenticate(request)  # 401 before anything else of the request is judged
    uploads = uploads_of(storage)
    length = tus.parse_number(headers.get("upload-length"), "Upload-Length")
    deferred = headers.get("upload-defer-length")
    if (length is None) == (deferred is None) or deferred not in (None, "1"):
        raise BadRequest("Send Upload-Length, or Upload-Defer-Length: 1.")
    if length is not None:
        check_length(length, settings)
    with_body = headers.get("content-type") == tus.PATCH_CONTENT_TYPE
    if not with_body and has_body(request):
        raise UnsupportedMediaType(f"A body sent with the creation is {tus.PATCH_CONTENT_TYPE}.")
    metadata = tus.parse_metadata(headers.get("upload-metadata"))
    upload_id = uuid.uuid4().hex
    key = tus.object_key(metadata, upload_id)
    await authorize(request, "write", key)
    state = await uploads.create(
        UploadSpec(
            id=upload_id,
            key=key,
            length=length,
            metadata=metadata,
            content_type=tus.content_type(metadata) or guess_type(key),
            filename=tus.filename(metadata),
        )
    )
    tus_event("created")
    location = {"Location": str(request.base_url) + f"uploads/{upload_id}"}
    if with_body or length == 0:
        try:
            state = await append(request, uploads, upload_id, 0, settings)
        except GatewayError as exc:
            exc.headers.update(location)  # the upload exists: the client may resume it
            raise
    return Response(status_code=201, headers={**location, **state_headers(state)})


@router.head(
    UPLOAD,
    response_class=Response,
    openapi_extra=TUS_VERSION,
    responses=problems(401, 403, 404, 410, 412),
)
async def head(upload_id: str, request: Request, storage: StorageDep) -> Response:
    """The upload's offset, length and metadata; X-Object-Key once it is complete."""
    state = await owned_upload(request, storage, upload_id)
    headers = {**state_headers(state), "Cache-Control": "no-store"}
    if state.length is None:
        headers["Upload-Defer-Length"] = "1"
    else:
        headers["Upload-Length"] = str(state.length)
    if state.metadata:
        headers["Upload-Metadata"] = tus.encode_metadata(state.metadata)
    return Response(status_code=200, headers=headers)


@router.patch(
    UPLOAD,
    status_code=204,
    response_class=Response,
    openapi_extra=PATCH_BODY,
    responses=problems(400, 401, 403, 404, 409, 410, 412, 413, 415, 423, 460),
)
async def patch(
    upload_id: str, request: Request, storage: StorageDep, settings: SettingsDep
) -> Response:
    """Append the body at Upload-Offset (Upload-Checksum verified when sent)."""
    tus.check_version(request.headers)
    principal = await authenticate(request)  # 401 before anything else is judged
    if request.headers.get("content-type") != tus.PATCH_CONTENT_TYPE:
        raise UnsupportedMediaType(f"A PATCH body is {tus.PATCH_CONTENT_TYPE}.")
    offset = tus.parse_number(request.headers.get("upload-offset"), "Upload-Offset")
    if offset is None:
        raise BadRequest("A PATCH needs Upload-Offset.")
    uploads = uploads_of(storage)
    state = await append(request, uploads, upload_id, offset, settings, principal)
    return Response(status_code=204, headers=state_headers(state))


@router.delete(
    UPLOAD,
    status_code=204,
    response_class=Response,
    openapi_extra=TUS_VERSION,
    responses=problems(401, 403, 404, 410, 412, 423),
)
async def terminate(upload_id: str, request: Request, storage: StorageDep) -> Response:
    """Terminate the upload: its bytes are removed (an object it completed stays)."""
    await owned_upload(request, storage, upload_id)
    await uploads_of(storage).terminate(upload_id)
    tus_event("terminated")
    return Response(status_code=204)


async def owned_upload(request: Request, storage: Storage, upload_id: str) -> UploadState:
    """The upload, if the caller's token may write its key (401 before storage is asked)."""
    tus.check_version(request.headers)
    principal = await authenticate(request)
    state = await uploads_of(storage).info(upload_id)
    principal.require("write", state.key)
    return state


async def append(
    request: Request,
    uploads: Uploads,
    upload_id: str,
    offset: int,
    settings: Settings,
    principal: Principal | None = None,
) -> UploadState:
    """Append the request's body to the upload; `principal`, when given, must be allowed to
    write the upload's key. The backend reads the upload's state once for both."""
    headers = request.headers
    length = tus.parse_number(headers.get("upload-length"), "Upload-Length")
    if length is not None:
        check_length(length, settings)
    declared = declared_size(request)
    unfinished = False

    def admit(state: UploadState) -> None:
        """Refuse the request before a byte of it is read."""
        nonlocal unfinished
        if principal is not None:
            principal.require("write", state.key)
        if length is not None and state.length is not None and length != state.length:
            raise BadRequest(f"The upload's length is {state.length}; it cannot change.")
        known = length if length is not None else state.length
        if known is not None and declared is not None and offset + declared > known:
            raise TooLarge("The chunk goes past the upload's length.")
        unfinished = state.object is None

    body = limited(client_buffers(request), int(settings.max_upload_bytes))
    after = await uploads.append(
        upload_id,
        offset,
        body,
        checksum=tus.parse_checksum(headers.get("upload-checksum")),
        length=length,
        admit=admit,
    )
    if after.object is not None and unfinished:
        tus_event("finished")
    return after


def has_body(request: Request) -> bool:
    declared = declared_size(request)
    return bool(declared) or "transfer-encoding" in request.headers


def check_length(length: int, settings: Settings) -> None:
    if length > int(settings.max_upload_bytes):
        raise TooLarge(
            f"Tus-Max-Size is {int(settings.max_upload_bytes)} bytes.",
            headers={"Tus-Max-Size": str(int(settings.max_upload_bytes))},
        )
