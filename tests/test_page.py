"""The upload page as files and headers, in-process; tests/test_browser.py runs it in Chromium."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.routes.page import STATIC
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


async def get(settings: Settings, path: str) -> httpx.Response:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            return await c.get(path)


async def test_the_page_and_its_files_are_served_with_a_strict_policy(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    page = await get(settings, "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for name, kind in [("page.js", "javascript"), ("tus.js", "javascript"), ("page.css", "css")]:
        response = await get(settings, f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert response.content == (STATIC / name).read_bytes()
    for outside in ("/static/nothing.js", "/static/..%2Fsettings.py", "/static/%2Fetc%2Fpasswd"):
        missing = await get(settings, outside)
        assert missing.status_code == 404, outside
        assert missing.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("path", ["/", "/static/page.js"])
async def test_the_page_can_be_turned_off(tmp_path: Path, path: str) -> None:
    response = await get(Settings(data_dir=tmp_path / "data", ui=False), path)
    assert response.status_code == 404 and response.json()["code"] == "not-found"


def test_the_page_loads_nothing_from_elsewhere() -> None:
    html = (STATIC / "index.html").read_text()
    references = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert references, "the page should load its script and style"
    for reference in references:
        if reference.startswith("data:"):
            continue
        assert "//" not in reference, f"{reference} is not the package's own"
        assert (STATIC.parent / reference).is_file(), f"{reference} is missing"
    for script in STATIC.glob("*.js"):
        imports = re.findall(r'from "([^"]+)"', script.read_text())
        assert all(name.startswith("./") for name in imports), script.name
        assert "http://" not in script.read_text() and "https://" not in script.read_text()


def test_a_wheel_carries_the_page(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy, so that the build leaves the work tree alone
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(
        ROOT / "gateway", source / "gateway", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("gateway-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in STATIC.iterdir():
        assert f"gateway/static/{path.name}" in names
