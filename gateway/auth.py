"""Who is asking, and whether they may do what they ask: checked before storage is touched.

Every route that touches objects calls `authorize` first, with the scope it needs:

    principal = await authorize(request, "read", key)   # the key is known up front
    principal = await authorize(request, "write")       # the key is learnt later ...
    principal.require("write", key)                     # ... and checked before it is used
    principal.require_prefix("list", prefix)            # every key under a prefix

No known bearer token: 401 with `WWW-Authenticate: Bearer`. A scope the token lacks, or a
key outside its prefix: 403. Neither depends on whether the key exists. Without a tokens
file the gateway is open and every request acts as `OPEN`, which may do anything. Routes
that accept presigned URLs pass `presigned=True`; such a request carries no token, and
the URL's signature stands in for one.

A route whose key is known only from stored state (a resumable upload's HEAD, PATCH or
DELETE) authenticates first, so that a stranger learns nothing, then checks that key:

    principal = await authenticate(request)             # 401 before storage is asked
    upload = await storage.upload_info(upload_id)
    principal.require("write", upload.key)              # 403 unless it is the caller's

`CallerDep` is `authenticate` as a FastAPI dependency, for routes that prefer one.
"""

import time
from dataclasses import dataclass
from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from . import presign
from .errors import Forbidden, Unauthorized
from .settings import Settings
from .tokens import OPEN, Principal, Scope, TokenStore

CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Access:
    tokens: TokenStore | None  # None: open, no token needed
    signing_key: bytes | None  # None: no presigned URLs

    @classmethod
    def from_settings(cls, settings: Settings) -> "Access":
        """Reads the tokens file; raises TokensFileError if it cannot be used."""
        tokens = TokenStore(settings.tokens_file) if settings.tokens_file else None
        key = settings.signing_key.get_secret_value().encode() if settings.signing_key else None
        return cls(tokens, key)


def get_access(request: Request) -> Access:
    return cast(Access, request.app.state.access)


def bearer_token(header: str | None) -> str | None:
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    # Header values arrive decoded as latin-1; the tokens file is UTF-8.
    return token.encode("latin-1").decode("utf-8", "surrogateescape")


async def authenticate(request: Request) -> Principal:
    """The principal behind the request's bearer token; 401 if there is none."""
    tokens = get_access(request).tokens
    if tokens is None:
        return OPEN
    await tokens.refresh()
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise Unauthorized(
            "A bearer token is required: send `Authorization: Bearer <token>`.", headers=CHALLENGE
        )
    principal = tokens.lookup(token)
    if principal is None:
        raise Unauthorized("The bearer token is not valid.", headers=CHALLENGE)
    return principal


async def authorize(
    request: Request, scope: Scope, key: str | None = None, *, presigned: bool = False
) -> Principal:
    """The request's principal if it may use `scope` (on `key`, when given); else 401 or 403."""
    if presigned and key is not None and presign.is_presigned(request.query_params):
        return presigned_principal(request, scope, key)
    principal = await authenticate(request)
    principal.require(scope, key)
    return principal


def presigned_principal(request: Request, scope: Scope, key: str) -> Principal:
    secret = get_access(request).signing_key
    if secret is None:
        raise Forbidden("This gateway does not accept presigned URLs.")
    params = request.query_params.multi_items()
    presign.verify(secret, request.method, key, params, time.time())
    return Principal("presigned URL", frozenset({scope}), only_key=key)


CallerDep = Annotated[Principal, Depends(authenticate)]

# Only declares the scheme on the OpenAPI page (its "Authorize" button); `authorize` decides.
OPENAPI_BEARER = Depends(HTTPBearer(auto_error=False, description="a token of the tokens file"))
