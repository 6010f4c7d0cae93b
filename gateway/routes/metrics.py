"""GET /metrics: Prometheus text format, open to scrapers without a token."""

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from .. import metrics

router = APIRouter(tags=["health"])


@router.get(
    "/metrics", response_class=Response, responses={200: {"content": {metrics.CONTENT_TYPE: {}}}}
)
async def get_metrics() -> Response:
    """Every metric of this process (of every worker, with several)."""
    # With several workers this reads one file per worker and metric kind: not on the loop.
    return Response(await run_in_threadpool(metrics.render), media_type=metrics.CONTENT_TYPE)
