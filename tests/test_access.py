"""Who may do what: every route against tokens of every scope and prefix, in-process."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from gateway import tokens
from gateway.app import create_app
from gateway.keys import validate_key
from gateway.settings import Settings
from gateway.tokens import TokensFileError, TokenStore
from tests.conftest import TOKENS, bearer, tokens_json

PROBLEM = "application/problem+json"
SEEDED = ["tenant-a/doc.txt", "tenant-b/doc.txt", "doc.txt", "report-1.txt"]


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    fields: dict[str, str] | None = None  # a multipart form with these fields and one file
    filename: str = "f.txt"
    json: dict[str, Any] | None = None
    body: bytes | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def send(self, client: httpx.AsyncClient, headers: dict[str, str]) -> Any:
        kwargs: dict[str, Any] = {}
        if self.fields is not None:
            kwargs = {"data": self.fields, "files": {"file": (self.filename, b"form data")}}
        elif self.json is not None:
            kwargs = {"json": self.json}
        elif self.body is not None:
            kwargs = {"content": self.body}
        return client.request(self.method, self.path, headers=headers, **kwargs)


def get(path: str) -> Call:
    return Call("GET", path)


def head(path: str) -> Call:
    return Call("HEAD", path)


def put(path: str) -> Call:
    return Call("PUT", path, body=b"new data")


def delete(path: str) -> Call:
    return Call("DELETE", path)


def form(path: str, filename: str = "f.txt", **fields: str) -> Call:
    return Call("POST", path, fields=fields, filename=filename)


def presign(key: str, method: str) -> Call:
    return Call("POST", "/presign", json={"key": key, "method": method, "expires_in": 60})


# (token name, or None for no header, or "bogus" for an unknown one), the call, the status
TABLE: list[tuple[str | None, Call, int]] = [
    # GET /objects/{key}
    (None, get("/objects/tenant-a/doc.txt"), 401),
    ("bogus", get("/objects/tenant-a/doc.txt"), 401),
    ("admin", get("/objects/tenant-b/doc.txt"), 200),
    ("a-read", get("/objects/tenant-a/doc.txt"), 200),
    ("a-all", get("/objects/tenant-a/doc.txt"), 200),
    ("a-read", get("/objects/tenant-a/missing"), 404),
    ("a-read", get("/objects/tenant-b/doc.txt"), 403),
    ("a-read", get("/objects/tenant-b/missing"), 403),
    ("a-read", get("/objects/doc.txt"), 403),
    ("a-read", get("/objects/tenant-a"), 403),
    ("a-write", get("/objects/tenant-a/doc.txt"), 403),
    ("a-list", get("/objects/tenant-a/doc.txt"), 403),
    # HEAD /objects/{key}
    (None, head("/objects/tenant-a/doc.txt"), 401),
    ("a-read", head("/objects/tenant-a/doc.txt"), 200),
    ("a-read", head("/objects/tenant-a/missing"), 404),
    ("a-read", head("/objects/tenant-b/doc.txt"), 403),
    ("a-delete", head("/objects/tenant-a/doc.txt"), 403),
    # PUT /objects/{key}
    (None, put("/objects/tenant-a/new"), 401),
    ("bogus", put("/objects/tenant-a/new"), 401),
    ("a-write", put("/objects/tenant-a/new"), 201),
    ("a-write", put("/objects/tenant-a/doc.txt"), 201),
    ("a-write", put("/objects/tenant-b/new"), 403),
    ("a-write", put("/objects/tenant-b/doc.txt"), 403),
    ("a-write", put("/objects/tenant-ab/new"), 403),
    ("a-read", put("/objects/tenant-a/new"), 403),
    ("admin", put("/objects/anywhere"), 201),
    # DELETE /objects/{key}
    (None, delete("/objects/tenant-a/doc.txt"), 401),
    ("a-delete", delete("/objects/tenant-a/doc.txt"), 204),
    ("a-delete", delete("/objects/tenant-a/missing"), 404),
    ("a-delete", delete("/objects/tenant-b/doc.txt"), 403),
    ("a-delete", delete("/objects/tenant-b/missing"), 403),
    ("a-write", delete("/objects/tenant-a/doc.txt"), 403),
    ("admin", delete("/objects/tenant-b/doc.txt"), 204),
    # GET /objects (listing)
    (None, get("/objects"), 401),
    ("bogus", get("/objects?prefix=tenant-a/"), 401),
    ("a-list", get("/objects"), 200),
    ("a-list", get("/objects?prefix="), 200),
    ("a-list", get("/objects?prefix=tenant-a/"), 200),
    ("a-list", get("/objects?prefix=tenant-a/sub/&delimiter=/"), 200),
    ("a-list", get("/objects?prefix=tenant-b/"), 403),
    ("a-list", get("/objects?prefix=tenant-"), 403),
    ("a-list", get("/objects?prefix=tenant-a"), 403),
    ("a-read", get("/objects"), 403),
    ("admin", get("/objects"), 200),
    # POST /objects (form)
    (None, form("/objects", prefix="tenant-a/"), 401),
    ("a-write", form("/objects", prefix="tenant-a/"), 201),
    ("a-write", form("/objects", key="tenant-a/exact"), 201),
    ("a-write", form("/objects", prefix="tenant-b/"), 403),
    ("a-write", form("/objects", key="tenant-b/exact"), 403),
    ("a-write", form("/objects"), 403),
    ("a-write", form("/objects", filename="tenant-a/../x", prefix="tenant-a/"), 201),
    ("a-read", form("/objects", prefix="tenant-a/"), 403),
    ("admin", form("/objects"), 201),
    # POST /objects/{key} (a browser form's target)
    (None, form("/objects/tenant-a/f"), 401),
    ("a-write", form("/objects/tenant-a/f"), 201),
    ("a-write", form("/objects/tenant-b/f"), 403),
    ("a-write", form("/objects/tenant-b/f", key="tenant-a/f"), 403),
    ("a-read", form("/objects/tenant-a/f"), 403),
    # POST /upload/ (key = the sanitized filename)
    (None, form("/upload/"), 401),
    ("admin", form("/upload/"), 200),
    ("report", form("/upload/", filename="report-2.txt"), 200),
    ("report", form("/upload/", filename="other.txt"), 403),
    ("a-write", form("/upload/", filename="tenant-a/f.txt"), 403),
    ("a-read", form("/upload/"), 403),
    # GET and HEAD /download/{filename}
    (None, get("/download/doc.txt"), 401),
    ("admin", get("/download/doc.txt"), 200),
    ("report", get("/download/report-1.txt"), 200),
    ("report", get("/download/report-9.txt"), 404),
    ("report", get("/download/doc.txt"), 403),
    ("a-read", get("/download/tenant-a/doc.txt"), 200),
    ("a-read", get("/download/doc.txt"), 403),
    ("a-write", get("/download/tenant-a/doc.txt"), 403),
    (None, head("/download/doc.txt"), 401),
    ("report", head("/download/report-1.txt"), 200),
    ("report", head("/download/doc.txt"), 403),
    # POST /presign
    (None, presign("tenant-a/doc.txt", "GET"), 401),
    ("bogus", presign("tenant-a/doc.txt", "GET"), 401),
    ("a-read", presign("tenant-a/doc.txt", "GET"), 200),
    ("a-read", presign("tenant-a/missing", "GET"), 200),
    ("a-read", presign("tenant-b/doc.txt", "GET"), 403),
    ("a-read", presign("tenant-a/new", "PUT"), 403),
    ("a-write", presign("tenant-a/new", "PUT"), 200),
    ("a-write", presign("tenant-b/new", "PUT"), 403),
    ("a-write", presign("tenant-a/doc.txt", "GET"), 403),
    ("a-list", presign("tenant-a/doc.txt", "GET"), 403),
    ("admin", presign("tenant-b/doc.txt", "PUT"), 200),
    # open routes
    (None, get("/healthz"), 200),
    (None, get("/readyz"), 200),
    ("bogus", get("/healthz"), 200),
]


def headers_for(name: str | None) -> dict[str, str]:
    if name is None:
        return {}
    if name == "bogus":
        return {"Authorization": "Bearer tok-not-in-the-file"}
    return bearer(name)


async def seed(client: httpx.AsyncClient) -> None:
    for key in SEEDED:
        stored = await client.put(f"/objects/{key}", content=key.encode(), headers=bearer("admin"))
        assert stored.status_code == 201


def assert_refusal(response: httpx.Response, status: int) -> None:
    assert response.headers["content-type"].startswith(PROBLEM)
    if response.request.method != "HEAD":
        assert response.json()["code"] == {401: "unauthorized", 403: "forbidden"}[status]
    assert ("www-authenticate" in response.headers) == (status == 401)
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("token", "call", "status"),
    TABLE,
    ids=[f"{token}-{call.method}-{call.path}" for token, call, _ in TABLE],
)
async def test_route_table(
    secured: httpx.AsyncClient, token: str | None, call: Call, status: int
) -> None:
    await seed(secured)
    before = await secured.get("/objects", headers=bearer("admin"))
    response = await call.send(secured, headers_for(token))
    assert response.status_code == status, response.text
    if status in (401, 403):
        assert_refusal(response, status)
        after = await secured.get("/objects", headers=bearer("admin"))
        assert after.json() == before.json(), "a refused request changed what is stored"


async def test_a_listing_shows_only_the_tokens_prefix(secured: httpx.AsyncClient) -> None:
    await seed(secured)
    await secured.put("/objects/tenant-a/sub/deep", content=b"x", headers=bearer("admin"))
    listing = await secured.get("/objects", headers=bearer("a-list"))
    assert [o["key"] for o in listing.json()["objects"]] == [
        "tenant-a/doc.txt",
        "tenant-a/sub/deep",
    ]
    rolled = await secured.get("/objects?delimiter=/", headers=bearer("a-list"))
    assert rolled.json()["prefixes"] == ["tenant-a/sub/"]
    assert [o["key"] for o in rolled.json()["objects"]] == ["tenant-a/doc.txt"]


async def test_a_refused_form_part_takes_the_earlier_ones_back(
    secured: httpx.AsyncClient,
) -> None:
    files = [("file", ("report-7.txt", b"mine")), ("file", ("other.txt", b"not mine"))]
    refused = await secured.post("/objects", files=files, headers=bearer("report"))
    assert refused.status_code == 403
    gone = await secured.get("/objects/report-7.txt", headers=bearer("admin"))
    assert gone.status_code == 404


async def test_the_token_is_read_from_the_authorization_header_only(
    secured: httpx.AsyncClient,
) -> None:
    token = TOKENS["admin"][0]
    assert (await secured.get("/objects", headers={"Authorization": f"bearer {token}"})).is_success
    for header in (token, f"Basic {token}", f"Bearer {token}x", f"Bearer {token[:-1]}", "Bearer"):
        response = await secured.get("/objects", headers={"Authorization": header})
        assert response.status_code == 401, header
    assert (await secured.get(f"/objects?token={token}")).status_code == 401


async def test_tokens_are_utf8(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(tokens_json({"u": ("tök-ünïcode-ß-0123", ["list"], "")}), encoding="utf-8")
    app = create_app(Settings(data_dir=tmp_path / "data", tokens_file=path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            header = "Bearer tök-ünïcode-ß-0123".encode()
            assert (await c.get("/objects", headers={b"Authorization": header})).is_success
            latin = "Bearer tök-ünïcode-ß-0123".encode("latin-1")
            assert (await c.get("/objects", headers={b"Authorization": latin})).status_code == 401


async def test_open_mode_needs_no_token(client: httpx.AsyncClient) -> None:
    assert (await client.put("/objects/anything", content=b"x")).status_code == 201
    assert (await client.get("/objects", headers={"Authorization": "Bearer junk"})).is_success


# --- no key under another prefix is ever reachable ------------------------------------

PREFIX = TOKENS["a-all"][2]
_key_text = st.text(
    alphabet="tenant-ab/ABx.%?#é 中",
    min_size=1,
    max_size=24,
)


def _valid(key: str) -> bool:
    try:
        validate_key(key)
    except Exception:
        return False
    return True


outside_keys = (
    st.one_of(
        _key_text,
        _key_text.map(lambda tail: "tenant-b/" + tail),
        _key_text.map(lambda tail: "tenant-a" + tail),
        _key_text.map(lambda tail: "Tenant-a/" + tail),
        st.sampled_from(["tenant-a", "tenant-", "tenant-ab/x", "x/tenant-a/y", "TENANT-A/x"]),
    )
    .filter(_valid)
    .filter(lambda key: not key.startswith(PREFIX))
)


def _attempts(key: str) -> list[Call]:
    path = quote(key, safe="/")
    name = key.rsplit("/", 1)[-1]
    return [
        get(f"/objects/{path}"),
        head(f"/objects/{path}"),
        put(f"/objects/{path}"),
        delete(f"/objects/{path}"),
        form(f"/objects/{path}"),
        form("/objects", key=key),
        form("/upload/", filename=name),
        get(f"/download/{path}"),
        head(f"/download/{path}"),
        Call("GET", "/objects", extra={"prefix": key}),
        presign(key, "GET"),
        presign(key, "PUT"),
    ]


# One gateway for every example, on purpose: keys stored by earlier examples stay around.
@hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=outside_keys, exists=st.booleans())
async def test_no_key_outside_the_prefix_is_reachable(
    secured: httpx.AsyncClient, key: str, exists: bool
) -> None:
    admin, caller = bearer("admin"), bearer("a-all")
    path = "/objects/" + quote(key, safe="/")
    if exists:
        assert (await secured.put(path, content=b"kept", headers=admin)).status_code == 201
    else:
        await secured.delete(path, headers=admin)
    for call in _attempts(key):
        response = await secured.request(
            call.method, call.path, headers=caller, params=call.extra or None, **_payload(call)
        )
        assert response.status_code == 403, (call, response.text)
        if call.method != "HEAD":
            assert response.json()["code"] == "forbidden"
    after = await secured.get(path, headers=admin)
    assert after.status_code == (200 if exists else 404)
    if exists:
        assert after.content == b"kept"


def _payload(call: Call) -> dict[str, Any]:
    if call.fields is not None:
        return {"data": call.fields, "files": {"file": (call.filename, b"form data")}}
    if call.json is not None:
        return {"json": call.json}
    if call.body is not None:
        return {"content": call.body}
    return {}


# --- the tokens file ------------------------------------------------------------------


def test_tokens_in_clear_and_as_digests_both_work(tokens_file: Path) -> None:
    store = TokenStore(tokens_file)
    assert len(store) == len(TOKENS)
    for name, (token, scopes, prefix) in TOKENS.items():
        principal = store.lookup(token)
        assert principal is not None, name
        assert (sorted(principal.scopes), principal.prefix) == (sorted(scopes), prefix)
    assert store.lookup("tok-admin") is None
    assert store.lookup(TOKENS["admin"][0] + " ") is None


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"scopes": ["read"]}, "exactly one of"),
        ({"token": "tok-sensitive-1", "token_sha256": "ab" * 32, "scopes": []}, "exactly one"),
        ({"token": "tok-sensitive-1", "scopes": ["fly"]}, "scopes.0"),
        ({"token": "tok-sensitive-1", "scopes": ["read"], "prefx": "a/"}, "prefx"),
        ({"token": "tok-sensitive-1", "scopes": ["read"], "prefix": "/a/"}, "'/'"),
        ({"token_sha256": "tok-sensitive-1", "scopes": ["read"]}, "token_sha256"),
        ({"token": "", "scopes": ["read"]}, "empty"),
    ],
)
def test_a_broken_entry_is_refused_without_showing_the_token(
    tmp_path: Path, entry: dict[str, Any], reason: str
) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [entry]}))
    with pytest.raises(TokensFileError) as refused:
        TokenStore(path)
    assert reason in str(refused.value)
    assert "tok-sensitive" not in str(refused.value)


@pytest.mark.parametrize(
    "text", ['{"tokens": [', "[]", '{"tokens": {}}', "", '{"tokens": [], "x": 1}']
)
def test_a_malformed_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(text)
    with pytest.raises(TokensFileError):
        TokenStore(path)


def test_a_token_given_twice_is_refused(tmp_path: Path) -> None:
    token = "tok-twice-abcdef"
    path = tmp_path / "tokens.json"
    path.write_text(tokens_json({"one": (token, ["read"], "a/"), "two": (token, ["write"], "b/")}))
    with pytest.raises(TokensFileError, match="twice"):
        TokenStore(path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TokensFileError, match="no tokens file"):
        create_app(Settings(data_dir=tmp_path, tokens_file=tmp_path / "nowhere.json"))


async def test_an_empty_file_lets_nobody_in(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"tokens": []}')
    app = create_app(Settings(data_dir=tmp_path / "data", tokens_file=path))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            assert (await c.get("/objects")).status_code == 401
            assert (await c.put("/objects/x", content=b"x")).status_code == 401


async def test_changes_to_the_file_are_picked_up(
    tokens_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tokens, "CHECK_INTERVAL", 0.0)
    store = TokenStore(tokens_file)
    old, new = TOKENS["admin"][0], "tok-new-0123456789"
    tokens_file.write_text(tokens_json({"new": (new, ["read"], "n/")}))
    await store.refresh()
    assert store.lookup(old) is None and store.lookup(new) is not None

    tokens_file.write_text('{"tokens": [{"token": "tok-leaked-42", "scopes": ["fly"]}]}')
    await store.refresh()
    assert store.lookup(new) is not None
    assert "keeping the previous 1 token(s)" in caplog.text and "scopes" in caplog.text
    assert "tok-leaked-42" not in caplog.text

    tokens_file.unlink()
    await store.refresh()
    assert store.lookup(new) is not None
