"""/objects: store, read, list and delete objects."""

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from .. import keys  # noqa: F401  (registers the {key:key} convertor)
from ..auth import OPENAPI_BEARER, authorize
from ..conditions import Outcome, evaluate, if_range_allows
from ..deps import SettingsDep, StorageDep
from ..errors import BadRequest, NotFound, PreconditionFailed, RangeNotSatisfiable
from ..intake import check_declared_size, client_buffers, limited, path_key, write_spec
from ..keys import has_control
from ..ranges import parse_range, resolve_range
from ..responses import head_response, refusal, stream_response
from ..schemas import (
    OBJECT_BYTES,
    RAW_BODY,
    ListingModel,
    ObjectInfoModel,
    ObjectsModel,
    form_body,
    key_parameter,
    object_links,
    problems,
)
from ..storage.base import ObjectReader, Storage
from .forms import store_form

router = APIRouter(tags=["objects"], dependencies=[OPENAPI_BEARER])
KEY_PATH = "/objects/{key:key}"
MOUNT = "/objects/"


@router.put(
    KEY_PATH,
    status_code=201,
    openapi_extra={**RAW_BODY, **key_parameter()},
    operation_id="put_object",
    responses={
        201: {"model": ObjectInfoModel, **object_links("/key")},
        **problems(400, 401, 403, 412, 413),
    },
)
async def put_object(request: Request, storage: StorageDep, settings: SettingsDep) -> Response:
    """Store the raw request body at `key`, streamed."""
    key = path_key(request, MOUNT)
    await authorize(request, "write", key, presigned=True)
    limit = int(settings.max_upload_bytes)
    check_declared_size(request, limit)
    spec = write_spec(request, key)
    if spec.create_only and await _exists(storage, key):
        raise PreconditionFailed("An object with this key exists (If-None-Match: *).")
    info = await storage.put(key, limited(client_buffers(request), limit), spec)
    return JSONResponse(
        info.to_json(), 201, headers={"ETag": info.etag, "Location": object_url(request, info.key)}
    )


@router.post(
    "/objects",
    status_code=201,
    openapi_extra=form_body(key_fields=True),
    operation_id="post_objects",
    responses={
        201: {"model": ObjectsModel, **object_links("/objects/0/key")},
        **problems(400, 401, 403, 413),
    },
)
async def post_objects(request: Request, storage: StorageDep, settings: SettingsDep) -> Response:
    """Store the file parts of a multipart/form-data body, each streamed as it arrives."""
    principal = await authorize(request, "write")
    stored = await store_form(
        request, storage, int(settings.max_upload_bytes), principal, fields=True
    )
    headers = {}
    if len(stored) == 1:
        headers = {
            "ETag": stored[0].etag,
            "Location": object_url(request, stored[0].key),
        }
    return JSONResponse({"objects": [info.to_json() for info in stored]}, 201, headers=headers)


@router.post(
    KEY_PATH,
    status_code=201,
    openapi_extra={**form_body(key_fields=False), **key_parameter()},
    responses={201: {"model": ObjectInfoModel}, **problems(400, 401, 403, 413)},
)
async def post_object(request: Request, storage: StorageDep, settings: SettingsDep) -> Response:
    """Store the one `file` part of a multipart/form-data body at `key`: the target of a
    browser form, with a token or a presigned PUT URL."""
    key = path_key(request, MOUNT)
    principal = await authorize(request, "write", key, presigned=True)
    [info] = await store_form(
        request,
        storage,
        int(settings.max_upload_bytes),
        principal,
        fields=False,
        max_files=1,
        key=key,
    )
    return JSONResponse(
        info.to_json(), 201, headers={"ETag": info.etag, "Location": object_url(request, info.key)}
    )


@router.get(
    KEY_PATH,
    response_class=Response,
    openapi_extra=key_parameter(),
    operation_id="get_object",
    responses={
        200: OBJECT_BYTES,
        206: OBJECT_BYTES,
        304: {},
        **problems(400, 401, 403, 404, 412, 416),
    },
)
async def get_object(
    request: Request,
    storage: StorageDep,
    disposition: Annotated[str, Query(pattern="^(attachment|inline)$")] = "attachment",
) -> Response:
    """Stream the object, whole or a Range of it, honouring conditional headers."""
    key = path_key(request, MOUNT)
    await authorize(request, "read", key, presigned=True)
    return await serve_object(request, storage, key, inline=disposition == "inline")


@router.head(
    KEY_PATH,
    response_class=Response,
    openapi_extra=key_parameter(),
    operation_id="head_object",
    responses=problems(400, 401, 403, 404, 412, 416),
)
async def head_object(
    request: Request,
    storage: StorageDep,
    disposition: Annotated[str, Query(pattern="^(attachment|inline)$")] = "attachment",
) -> Response:
    """The headers a GET would send, without the body."""
    key = path_key(request, MOUNT)
    await authorize(request, "read", key, presigned=True)
    return await serve_object(request, storage, key, inline=disposition == "inline", head=True)


@router.delete(
    KEY_PATH,
    status_code=204,
    response_class=Response,
    openapi_extra=key_parameter(),
    operation_id="delete_object",
    responses=problems(400, 401, 403, 404),
)
async def delete_object(request: Request, storage: StorageDep) -> Response:
    key = path_key(request, MOUNT)
    await authorize(request, "delete", key, presigned=True)
    await storage.delete(key)
    return Response(status_code=204)


@router.get("/objects", responses={200: {"model": ListingModel}, **problems(400, 401, 403)})
async def list_objects(
    request: Request,
    storage: StorageDep,
    prefix: Annotated[str, Query(max_length=1024)] = "",
    delimiter: Annotated[str | None, Query(max_length=16)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    cursor: Annotated[str | None, Query(max_length=4096)] = None,
) -> Response:
    """Objects in UTF-8 byte order of their keys; with `delimiter`, rolled-up prefixes too.
    A token with a prefix lists under it; a `prefix` outside it is 403."""
    principal = await authorize(request, "list")
    prefix = prefix or principal.prefix
    principal.require_prefix("list", prefix)
    if delimiter and has_control(delimiter):
        # no key holds one; and S3-compatible servers may fail on it in their XML
        raise BadRequest("A delimiter may not hold control characters.")
    listing = await storage.list(prefix, delimiter or None, cursor or None, limit)
    return JSONResponse(
        {
            "objects": [info.to_json() for info in listing.objects],
            "prefixes": listing.prefixes,
            "next_cursor": listing.next_cursor,
        }
    )


def object_url(request: Request, key: str) -> str:
    return str(request.url_for("get_object", key=quote(key, safe="/")))


async def _exists(storage: Storage, key: str) -> bool:
    try:
        await storage.stat(key)
    except NotFound:
        return False
    return True


async def serve_object(
    request: Request, storage: Storage, key: str, *, inline: bool = False, head: bool = False
) -> Response:
    """GET or HEAD of `key`: preconditions first, then the Range (RFC 9110's order)."""
    headers = request.headers
    spec = parse_range(headers.get("range"))
    reader: ObjectReader | None = None
    if head:
        info = await storage.stat(key)
    else:
        try:
            reader = await storage.open(key, spec)
            info = reader.info
        except RangeNotSatisfiable:
            info = await storage.stat(key)  # a failed precondition outranks the 416
    try:
        outcome = evaluate(headers, info.etag, info.last_modified)
        if outcome is not Outcome.PROCEED:
            return refusal(outcome, info)
        if spec and not if_range_allows(headers.get("if-range"), info.etag, info.last_modified):
            spec = None
            if reader is not None and reader.range is not None:
                await reader.aclose()
                reader = None
        if head:
            return head_response(
                info, resolve_range(spec, info.size) if spec else None, inline=inline
            )
        if reader is None:
            reader = await storage.open(key, spec)
        response = stream_response(reader, inline=inline)
        reader = None  # the response closes it now
        return response
    finally:
        if reader is not None:
            await reader.aclose()
