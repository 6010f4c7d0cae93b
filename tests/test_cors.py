"""CORS for browser apps: preflights for the API and tus, and the headers a page may read."""

from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from tests.conftest import bearer

APP = "https://app.example"
EXPOSED = [
    "ETag",
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Expires",
    "Upload-Metadata",
    "X-Object-Key",
    "Content-Range",
    "Content-Disposition",
    "X-Checksum-SHA256",
]


@pytest.fixture
async def browser(secured_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    settings = secured_settings.model_copy(update={"cors_origins": [APP, "http://localhost:3000"]})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            yield c


def preflight(method: str, headers: str, origin: str = APP) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


def names(value: str) -> set[str]:
    return {name.strip().lower() for name in value.split(",")}


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        (
            "/objects/a/b.txt",
            "PUT",
            "Authorization, Content-Type, Content-MD5, X-Checksum-SHA256, If-None-Match, "
            "X-Meta-Author, X-Meta-Project-Code",
        ),
        ("/objects/a/b.txt", "GET", "authorization, range, if-match, if-none-match, if-range"),
        ("/objects/a/b.txt", "DELETE", "Authorization"),
        ("/objects", "POST", "Authorization"),
        ("/presign", "POST", "authorization, content-type"),
        (
            "/uploads/",
            "POST",
            "Authorization, Tus-Resumable, Upload-Length, Upload-Metadata, Upload-Defer-Length, "
            "Upload-Concat, Upload-Checksum",
        ),
        (
            "/uploads/abc",
            "PATCH",
            "Authorization, Tus-Resumable, Upload-Offset, Upload-Checksum, Content-Type",
        ),
        ("/uploads/abc", "HEAD", "Authorization, Tus-Resumable"),
    ],
)
async def test_preflights_of_the_api_and_tus_are_allowed(
    browser: httpx.AsyncClient, path: str, method: str, headers: str
) -> None:
    response = await browser.options(path, headers=preflight(method, headers))
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP
    assert method.lower() in names(response.headers["access-control-allow-methods"])
    assert names(headers) <= names(response.headers["access-control-allow-headers"])
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize(
    "asked",
    [
        preflight("PUT", "Authorization", origin="https://evil.example"),
        preflight("PUT", "Authorization, X-Evil"),
        preflight("PUT", "X-Meta-"),
        preflight("TRACE", "Authorization"),
    ],
)
async def test_other_preflights_are_refused(
    browser: httpx.AsyncClient, asked: dict[str, str]
) -> None:
    response = await browser.options("/objects/k", headers=asked)
    assert response.status_code == 400  # a preflight that is not 2xx fails in the browser
    if asked["Origin"] != APP:
        assert "access-control-allow-origin" not in response.headers


async def test_a_page_may_read_the_headers_it_needs(browser: httpx.AsyncClient) -> None:
    stored = await browser.put(
        "/objects/k.txt",
        content=b"hello",
        headers={"Origin": APP, "X-Meta-Author": "a user", **bearer("admin")},
    )
    assert stored.status_code == 201
    assert stored.headers["access-control-allow-origin"] == APP
    exposed = names(stored.headers["access-control-expose-headers"])
    assert {name.lower() for name in EXPOSED} <= exposed

    got = await browser.get("/objects/k.txt", headers={"Origin": APP, **bearer("admin")})
    assert got.headers["access-control-allow-origin"] == APP
    assert "x-meta-author" in names(got.headers["access-control-expose-headers"])
    assert got.headers["x-meta-author"] == "a user"


async def test_refusals_reach_the_page_too(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/objects/k.txt", headers={"Origin": APP})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == APP
    assert "www-authenticate" in names(response.headers["access-control-expose-headers"])


async def test_other_origins_get_no_grant(browser: httpx.AsyncClient) -> None:
    response = await browser.get("/healthz", headers={"Origin": "https://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


async def test_without_origins_there_is_no_cors(client: httpx.AsyncClient) -> None:
    response = await client.options("/objects/k", headers=preflight("PUT", "Authorization"))
    assert "access-control-allow-origin" not in response.headers
    simple = await client.get("/healthz", headers={"Origin": APP})
    assert "access-control-allow-origin" not in simple.headers
