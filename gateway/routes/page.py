"""The upload page at `/` and its files at `/static/`: plain HTML, CSS and JavaScript shipped
in the package (gateway/static/), with no build step. `GATEWAY_UI=false` leaves both out."""

from pathlib import Path

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static"

# The page holds a bearer token, so it runs only its own code: no inline script, nothing
# from elsewhere, and no framing by other sites.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load (a cheap 304), so that a new version shows up at once.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)
# Starlette's static files, behind a route of ours, so that metrics and logs name the
# route (`/static/{path}`) and every answer carries the headers above.
_files = StaticFiles(directory=STATIC)


@router.get("/")
async def page() -> Response:
    return FileResponse(STATIC / "index.html", headers=SECURITY_HEADERS)


@router.get("/static/{path:path}")
async def static(path: str, request: Request) -> Response:
    response = await _files.get_response(path, request.scope)
    response.headers.update(SECURITY_HEADERS)
    return response
