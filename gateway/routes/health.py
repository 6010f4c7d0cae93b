"""Liveness and readiness."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.responses import Response

from ..deps import LifecycleDep, StorageDep
from ..errors import BackendUnavailable, GatewayError
from ..schemas import problems

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Response:
    """200 while the process serves."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", responses=problems(503))
async def readyz(storage: StorageDep, lifecycle: LifecycleDep) -> Response:
    """200 when the storage backend answers, else 503; 503 too once shutdown has begun, so
    that load balancers stop sending requests here."""
    if lifecycle.draining:
        raise BackendUnavailable("The gateway is shutting down.")
    try:
        await storage.check()
    except GatewayError as exc:
        raise BackendUnavailable(exc.detail) from exc
    return JSONResponse({"status": "ready", "backend": storage.name})
