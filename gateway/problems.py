"""RFC 9457 problem responses: the one place where errors become HTTP."""

import logging
from collections.abc import Iterable, Iterator
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match

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
        error = MethodNotAllowed(headers={"Allow": _allowed_methods(request)})
    else:
        error = BadRequest(str(exc.detail))
        error.status = exc.status_code
    return problem(error, request.url.path)


def _allowed_methods(request: Request) -> str:
    """Every method the path takes: Starlette names those of the first route that matched
    the path only, and GET and POST of /objects are two routes."""
    methods: set[str] = set()
    for route in _flat(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def _flat(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        included = getattr(route, "original_router", None)  # how FastAPI includes a router
        if included is not None:
            yield from _flat(included.routes)
        else:
            yield route


async def _client_gone(request: Request, exc: Exception) -> Response:
    # Nobody will read this; the upload was already aborted by whoever read the body.
    return problem(BadRequest("The client went away."), request.url.path)


async def _unexpected(request: Request, exc: Exception) -> Response:
    cause = exc.__cause__
    if isinstance(cause, GatewayError):
        # Raised while a body was streaming (storage stopped sending an object): the status
        # line is gone already, and cutting the connection short is all that is left to do.
        log.warning(
            "%s %s: %s; the response was cut short",
            request.method,
            request.url.path,
            cause.detail,
            exc_info=cause,
        )
        return problem(cause, request.url.path)
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return problem(GatewayError(), request.url.path)


def install(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
