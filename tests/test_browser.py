"""The upload page in Debian's headless Chromium, driven by Playwright, against a real
`gateway serve`: picking files, progress to 100%, the listing, downloads, pause and resume,
a reload in the middle of an upload, the token, and a phone's screen.

Uploads are slowed down by the page's own `chunk` and `rate` parameters, so that there is a
"middle" to pause or reload in; the tests wait on the page's state, never on the clock.
Screenshots go to test-artifacts/.
"""

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

from gateway.testing import RunningGateway, gateway_on_moto, running_gateway
from tests.conftest import TOKENS, tokens_json
from tests.helpers import MiB, wait_for

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SIGNING_KEY = "9d0c4b7e2a6f1e8d3c5b7a9f0e2d4c6b8a0f1e3d5c7b9a1f"
SLOW = "chunk=65536&rate=524288"  # 64 KiB a request, 512 KiB a second: 4 s for 2 MiB
WAIT_MS = 20_000
expect.set_options(timeout=WAIT_MS)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium", path="/usr/bin")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def require_tus(gateway: RunningGateway) -> None:
    response = httpx.options(f"{gateway.url}/uploads/")
    if "tus-version" not in response.headers:
        pytest.skip("the gateway has no /uploads/ routes (tus) yet")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module", params=["local", "s3"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """The page's tests run on both backends: on S3, a form's files and a resumable
    upload's chunks take other paths (parts, tail objects) behind the same page."""
    if request.param == "s3":
        with gateway_on_moto() as on_moto:
            require_tus(on_moto.gateway)
            yield on_moto.gateway
        return
    with running_gateway(data_dir=tmp_path_factory.mktemp("page") / "data") as running:
        require_tus(running)
        yield running


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 760})
    made.set_default_timeout(WAIT_MS)
    yield made
    made.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    assert errors == [], "the page's scripts failed"


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def random_bytes(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def stored(gateway: RunningGateway, key: str, headers: dict[str, str] | None = None) -> bytes:
    response = httpx.get(f"{gateway.url}/objects/{key}", headers=headers)
    assert response.status_code == 200, response.text
    return response.content


def upload_row(page: Page, name: str) -> Locator:
    return page.locator(f'#upload-list .upload[data-name="{name}"]')


def offset(row: Locator) -> int:
    return int(row.get_attribute("data-offset") or 0)


def server_offset(url: str, headers: dict[str, str] | None = None) -> int:
    response = httpx.head(url, headers={"Tus-Resumable": "1.0.0", **(headers or {})})
    assert response.status_code in (200, 204), response.status_code
    return int(response.headers["upload-offset"])


def saved_upload_urls(context: BrowserContext) -> list[str]:
    """The upload URLs the page kept in localStorage."""
    urls = []
    for origin in context.storage_state()["origins"]:
        for item in origin["localStorage"]:
            if item["name"].startswith("tus-upload:"):
                urls.append(json.loads(item["value"])["url"])
    return urls


def test_two_files_by_the_file_input_listed_downloaded_and_deleted(
    page: Page, gateway: RunningGateway, tmp_path: Path
) -> None:
    first = tmp_path / "holiday.bin"
    second = tmp_path / "notes ü.txt"
    first_bytes = random_bytes(first, 3 * MiB + 17)
    second_bytes = b"a line of notes\n" * 20_000
    second.write_bytes(second_bytes)

    page.goto(f"{gateway.url}/?chunk={2 * MiB}")
    expect(page.locator("#objects-status")).to_have_text("Nothing stored yet.")
    page.set_input_files("#files", [first, second])
    for path, data in ((first, first_bytes), (second, second_bytes)):
        row = upload_row(page, path.name)
        expect(row).to_have_attribute("data-state", "done")
        expect(row.locator(".percent")).to_have_text("100%")
        bar = row.locator("progress")
        expect(bar).to_have_attribute("value", str(len(data)))
        expect(bar).to_have_attribute("max", str(len(data)))
        expect(row.locator(".figures")).to_contain_text(f"stored as {path.name}")
        listed = page.locator(f'#object-list .object[data-key="{path.name}"]')
        expect(listed).to_be_visible()
        assert stored(gateway, path.name) == data
    expect(page.locator('.object[data-key="holiday.bin"] .size')).to_have_text("3.0 MiB")
    screenshot(page, "page-two-uploads")

    with page.expect_download() as downloading:
        page.locator('.object[data-key="holiday.bin"] a.download').click()
    download = downloading.value
    assert download.suggested_filename == "holiday.bin"
    assert Path(download.path()).read_bytes() == first_bytes

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f'.object[data-key="{second.name}"] button.delete').click()
    expect(page.locator(f'.object[data-key="{second.name}"]')).to_have_count(0)
    gone = httpx.get(f"{gateway.url}/objects/{second.name}")
    assert gone.status_code == 404


def test_pause_one_upload_while_another_goes_on_then_resume_it(
    page: Page, gateway: RunningGateway, tmp_path: Path
) -> None:
    source, other = tmp_path / "paused.bin", tmp_path / "going-on.bin"
    data, other_data = random_bytes(source, 2 * MiB), random_bytes(other, 3 * MiB)
    page.goto(f"{gateway.url}/?{SLOW}")
    page.set_input_files("#files", [source, other])
    row, other_row = upload_row(page, source.name), upload_row(page, other.name)
    wait_for(lambda: offset(row) >= 256 * 1024, what="the upload to get going")
    row.locator("button.pause").click()
    expect(row).to_have_attribute("data-state", "paused")
    expect(row.locator("button.resume")).to_be_visible()
    url = row.get_attribute("data-url")
    assert url
    expect(other_row.locator(".figures")).to_contain_text("/s")  # its speed, time left
    screenshot(page, "page-paused")

    # The other upload goes on meanwhile; the paused one stays where it was. (Its reading
    # waits for a few of the other's requests, so that one cut off by the pause is over.)
    going = offset(other_row)
    wait_for(lambda: offset(other_row) >= going + 128 * 1024, what="the other upload")
    held = server_offset(url)
    assert 0 < held < len(data)
    wait_for(lambda: offset(other_row) >= going + 512 * 1024, what="the other upload")
    assert server_offset(url) == held and other_row.get_attribute("data-state") == "uploading"

    row.locator("button.resume").click()
    expect(row).to_have_attribute("data-state", "done")
    expect(other_row).to_have_attribute("data-state", "done")
    assert row.get_attribute("data-url") == url  # the same upload went on, none was made anew
    expect(row.locator(".percent")).to_have_text("100%")
    assert stored(gateway, source.name) == data
    assert stored(gateway, other.name) == other_data
    assert saved_upload_urls(page.context) == []  # finished uploads are forgotten


def test_a_reload_in_the_middle_resumes_when_the_file_is_picked_again(
    page: Page, gateway: RunningGateway, tmp_path: Path
) -> None:
    source = tmp_path / "reloaded.bin"
    data = random_bytes(source, 2 * MiB)
    page.goto(f"{gateway.url}/?{SLOW}")
    page.set_input_files("#files", [source])
    row = upload_row(page, source.name)
    wait_for(lambda: offset(row) >= 256 * 1024, what="the upload to get going")
    [url] = saved_upload_urls(page.context)

    page.reload()
    unfinished = page.locator(f'#unfinished .unfinished[data-name="{source.name}"]')
    expect(unfinished).to_be_visible()
    screenshot(page, "page-after-reload")
    before = server_offset(url)
    assert 0 < before < len(data)

    page.set_input_files("#files", [source])
    row = upload_row(page, source.name)
    expect(row).to_have_attribute("data-state", "done")
    assert row.get_attribute("data-url") == url
    resumed_from = int(row.get_attribute("data-resumed-from") or 0)
    assert before <= resumed_from < len(data)
    expect(unfinished).to_have_count(0)
    assert stored(gateway, source.name) == data


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("secured")
    tokens = folder / "tokens.json"
    tokens.write_text(tokens_json(TOKENS))
    env = {"GATEWAY_TOKENS_FILE": str(tokens), "GATEWAY_SIGNING_KEY": SIGNING_KEY}
    with running_gateway(data_dir=folder / "data", env=env) as running:
        require_tus(running)
        yield running


def test_the_token_is_asked_for_kept_over_a_reload_and_used(
    page: Page, secured: RunningGateway, tmp_path: Path
) -> None:
    token = TOKENS["admin"][0]
    source = tmp_path / "secret.bin"
    data = random_bytes(source, MiB + 5)
    page.goto(secured.url)
    form = page.locator("#token-form")
    expect(form).to_be_visible()
    screenshot(page, "page-token")

    page.fill("#token", "not-a-token")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#token-problem")).to_have_text("That token was not accepted.")
    page.fill("#token", token)
    page.click("#token-form button[type=submit]")
    expect(form).to_be_hidden()
    expect(page.locator("#objects-status")).to_have_text("Nothing stored yet.")

    page.set_input_files("#files", [source])
    expect(upload_row(page, source.name)).to_have_attribute("data-state", "done")
    assert stored(secured, source.name, {"Authorization": f"Bearer {token}"}) == data

    page.reload()  # sessionStorage keeps the token for the tab
    expect(form).to_be_hidden()
    listed = page.locator(f'.object[data-key="{source.name}"]')
    expect(listed).to_be_visible()
    with page.expect_download() as downloading:  # over a presigned URL: a link has no token
        listed.locator("a.download").click()
    assert Path(downloading.value.path()).read_bytes() == data


def test_it_fits_a_phone(browser: Browser, gateway: RunningGateway, tmp_path: Path) -> None:
    phone = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    try:
        page = phone.new_page()
        page.set_default_timeout(WAIT_MS)
        source = tmp_path / "a photo with a rather long name, taken on a phone.jpg"
        data = random_bytes(source, MiB)
        page.goto(gateway.url)
        page.set_input_files("#files", [source])
        expect(upload_row(page, source.name)).to_have_attribute("data-state", "done")
        listed = page.locator(f'.object[data-key="{source.name}"]')
        expect(listed).to_be_visible()
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide on a 390px screen"
        box = listed.locator("button.delete").bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390
        assert stored(gateway, source.name) == data
        screenshot(page, "page-phone")
    finally:
        phone.close()
