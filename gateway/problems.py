"""RFC 9457 problem responses: the one place where errors become HTTP."""

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from .errors import BadRequest, GatewayError, MethodNotAllowed, NotFound

log = logging.getLogger("gateway")

PROBLEM_JSON = "application/problem+json"


def problem(error: GatewayError, instance: str | None = None) -> JSONResponse:
    body: dict[str, object] = {
        "type": "about:blank",
        "title": error.title or HTTPStatus(error.status).phrase,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
    }
    if instance:
        body["instance"] = instance
    return JSONResponse(body, error.status, headers=error.headers, media_type=PROBLEM_JSON)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    if exc.status >= 500:
        log.warning(
            "%s %s: %s",
            request.method,
            request.url.path,
            exc.detail,
            exc_info=exc.__cause__ is not None,
        )
    return problem(exc, request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    where = [
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    ]
    return problem(BadRequest("; ".join(where) or None), request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: GatewayError
    if exc.status_code == 404:
        error = NotFound("No such resource.")
    elif exc.status_code == 405:
        error = MethodNotAllowed(headers=exc.headers)
    else:
        error = BadRequest(str(exc.detail))
        error.status = exc.status_code
    return problem(error, request.url.path)


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody will read this; the upload was already aborted by whoever read the body.
    return problem(BadRequest("The client went away."), request.url.path)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return problem(GatewayError(), request.url.path)


def install(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
