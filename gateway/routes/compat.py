"""The two endpoints of the classic FastAPI upload article, kept for drop-in use."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.responses import Response

from .. import keys  # noqa: F401  (registers the {key:key} convertor)
from ..auth import OPENAPI_BEARER, authorize
from ..deps import SettingsDep, StorageDep
from ..intake import path_key
from ..schemas import OBJECT_BYTES, CompatUploadModel, form_body, key_parameter, problems
from .forms import store_form
from .objects import serve_object

router = APIRouter(tags=["compatibility"], dependencies=[OPENAPI_BEARER])
MOUNT = "/download/"


@router.post(
    "/upload/",
    openapi_extra=form_body(key_fields=False),
    responses={200: {"model": CompatUploadModel}, **problems(400, 401, 403, 413)},
)
async def upload(request: Request, storage: StorageDep, settings: SettingsDep) -> Response:
    """Store the form's `file` under its sanitized filename, streamed."""
    principal = await authorize(request, "write")
    [info] = await store_form(
        request, storage, int(settings.max_upload_bytes), principal, fields=False, max_files=1
    )
    return JSONResponse(
        {
            "filename": info.filename or info.key,
            "message": "Upload successful",
            "object": info.to_json(),
        }
    )


@router.get(
    "/download/{filename:key}",
    response_class=Response,
    openapi_extra=key_parameter("filename"),
    responses={
        200: OBJECT_BYTES,
        **problems(400, 401, 403, 404, 412, 416),
    },
)
async def download(
    request: Request,
    storage: StorageDep,
    disposition: Annotated[str, Query(pattern="^(attachment|inline)$")] = "attachment",
) -> Response:
    """As GET /objects/{filename}."""
    key = path_key(request, MOUNT)
    await authorize(request, "read", key)
    return await serve_object(request, storage, key, inline=disposition == "inline")


@router.head(
    "/download/{filename:key}",
    response_class=Response,
    openapi_extra=key_parameter("filename"),
    responses=problems(400, 401, 403, 404, 412, 416),
)
async def download_head(
    request: Request,
    storage: StorageDep,
    disposition: Annotated[str, Query(pattern="^(attachment|inline)$")] = "attachment",
) -> Response:
    key = path_key(request, MOUNT)
    await authorize(request, "read", key)
    return await serve_object(request, storage, key, inline=disposition == "inline", head=True)
