"""POST /presign: URLs that let whoever holds them GET or PUT one object until they expire."""

import time
from typing import Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.responses import Response

from .. import presign
from ..auth import OPENAPI_BEARER, authenticate, get_access
from ..errors import BadRequest, NotFound, TooLarge
from ..intake import client_body
from ..keys import validate_key
from ..schemas import problems
from ..tokens import Scope
from .objects import object_url

router = APIRouter(tags=["presigned URLs"], dependencies=[OPENAPI_BEARER])

MAX_BODY_BYTES = 16 * 1024
SCOPE_FOR: dict[str, Scope] = {"GET": "read", "PUT": "write"}


class PresignRequest(BaseModel):
    key: str
    method: Literal["GET", "PUT"]
    expires_in: int = Field(ge=1, le=presign.MAX_EXPIRES_IN, description="seconds")


class PresignedModel(BaseModel):
    url: str = Field(description="absolute; works without a token until it expires")
    method: Literal["GET", "PUT"]
    expires_at: str = Field(description="RFC 3339, UTC")


BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PresignRequest.model_json_schema()}},
    }
}


@router.post(
    "/presign",
    openapi_extra=BODY,
    responses={200: {"model": PresignedModel}, **problems(400, 401, 403, 404)},
)
async def create_presigned_url(request: Request) -> Response:
    """A URL for one method on one key, within the caller's scopes and prefix (GET needs
    `read`, PUT `write`). 404 when the gateway has no signing key."""
    principal = await authenticate(request)
    secret = get_access(request).signing_key
    if secret is None:
        raise NotFound("Presigned URLs are off: the gateway has no GATEWAY_SIGNING_KEY.")
    asked = _parse(await _small_body(request))
    key = validate_key(asked.key)
    principal.require(SCOPE_FOR[asked.method], key)
    expires = int(time.time()) + asked.expires_in
    url = (
        object_url(request, key)
        + "?"
        + urlencode(presign.query(secret, asked.method, key, expires))
    )
    return JSONResponse(
        {"url": url, "method": asked.method, "expires_at": presign.rfc3339(expires)}
    )


async def _small_body(request: Request) -> bytes:
    # Read by hand, after authentication and with a bound: FastAPI would buffer any size.
    chunks, size = [], 0
    async for chunk in client_body(request):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TooLarge(f"A presign request is at most {MAX_BODY_BYTES} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> PresignRequest:
    try:
        return PresignRequest.model_validate_json(body)
    except ValidationError as exc:
        where = [
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        ]
        raise BadRequest("; ".join(where)) from None
