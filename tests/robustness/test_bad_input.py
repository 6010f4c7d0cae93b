"""Bad input at scale, over real HTTP to a gateway on each backend: hypothesis over keys,
filenames and Range headers, and malformed or hostile multipart bodies written by hand.
Whatever comes in, the answer is a documented status (never a 5xx), what is stored reads
back exactly, and nothing of a refused request is left behind."""

import os
import re
import socket
import time
from collections.abc import Iterator
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.keys import key_for_filename, validate_key
from tests.helpers import read_response
from tests.robustness import tus
from tests.robustness.conftest import MiB, Served
from tests.robustness.raw import BOUNDARY

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
KEY_TEXT = st.text(
    st.one_of(
        st.sampled_from("/.\\ %?#&+=;:\x00\x1f\x7f"),
        st.characters(codec="utf-8"),
    ),
    min_size=0,
    max_size=40,
)


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        yield client


def is_valid_key(key: str) -> bool:
    try:
        validate_key(key)
    except GatewayError:
        return False
    return True


def problem_code(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.text
    code: str = response.json()["code"]
    return code


def put_verbatim(served: Served, path: str, body: bytes) -> httpx.Response:
    """PUT to `path` as it is: httpx, like browsers, resolves the dot segments of a URL
    (`/objects/.` becomes `/objects/`), which a client such as `curl --path-as-is` keeps."""
    with socket.create_connection(("127.0.0.1", served.gateway.port)) as conn:
        conn.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: gateway\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        head, _, content = read_response(conn).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines)]
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=content)


@given(key=KEY_TEXT)
@example(key=".")  # dot segments: the client would resolve them away
@example(key="..")
@FUZZ
def test_any_key_is_stored_verbatim_or_refused(
    served: Served, http: httpx.Client, key: str
) -> None:
    path = "/objects/" + quote(key.encode("utf-8", "surrogatepass"), safe="")
    body = key.encode("utf-8", "surrogatepass") or b"empty"
    if key in (".", ".."):
        response = put_verbatim(served, path, body)
    else:
        response = http.put(path, content=body)
    if not key:  # `/objects/` names no object: Starlette points at `/objects`
        assert response.status_code == 307
        return
    if not is_valid_key(key):
        assert response.status_code in (400, 404), response.text
        assert problem_code(response) in ("invalid-key", "not-found")
        return
    assert response.status_code == 201, response.text
    assert response.json()["key"] == key
    assert http.get(path).content == body
    listed = http.get("/objects", params={"prefix": key}).json()["objects"]
    assert key in [item["key"] for item in listed]
    assert http.delete(path).status_code == 204


FILENAME = st.text(
    st.one_of(
        st.sampled_from("/\\\"; =%*'."), st.characters(codec="utf-8", exclude_categories=["Cs"])
    ),
    min_size=1,
    max_size=30,
)


@given(filename=FILENAME)
@example(filename="0 ")  # S3 trims metadata values: a trailing space was lost
@example(filename=" lead")
@FUZZ
def test_any_filename_is_named_back_or_refused(
    served: Served, http: httpx.Client, filename: str
) -> None:
    response = http.post("/objects", data={"prefix": "up/"}, files={"file": (filename, b"content")})
    assert response.status_code in (201, 400), response.text
    if response.status_code == 400:
        assert problem_code(response) in ("bad-request", "invalid-key")
        return
    [stored] = response.json()["objects"]
    key = stored["key"]
    assert key == key_for_filename(stored["filename"], "up/")
    got = http.get("/objects/" + quote(key, safe="/"))
    assert got.content == b"content"
    assert download_name(got.headers["content-disposition"]) == stored["filename"]
    assert http.delete("/objects/" + quote(key, safe="/")).status_code == 204


def download_name(disposition: str) -> str:
    """The name a browser saves under (RFC 6266: `filename*` over `filename`)."""
    extended = re.search(r"filename\*=UTF-8''([^;]+)", disposition)
    if extended:
        return unquote(extended[1])
    plain = re.search(r'filename="([^"]*)"', disposition)
    assert plain is not None, disposition
    return plain[1]


DATA = os.urandom(1000)
NUMBER = st.one_of(
    st.integers(0, 1100).map(str), st.sampled_from(["", " ", "-1", "0x10", "9" * 30])
)
RANGE = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", NUMBER, NUMBER),
    st.builds(lambda a, b, c: f"bytes={a}-{b},{c}-", NUMBER, NUMBER, NUMBER),
    st.builds(
        lambda unit, a: f"{unit}={a}-", st.sampled_from(["items", "Bytes", "bytes "]), NUMBER
    ),
    st.from_regex(r"[!-~][ -~]{0,30}", fullmatch=True),  # any header a client can send
).map(str.strip)
_SINGLE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def expected(header: str, size: int) -> tuple[int, int, bytes]:
    """What RFC 9110 and the README ask: one range 206 (or 416), else the whole object."""
    match = _SINGLE.match(header)
    if not match or not (match[1] or match[2]):
        return 200, 0, DATA
    first, last = match[1], match[2]
    if first and last and int(first) > int(last):
        return 200, 0, DATA
    if not first:
        suffix = int(last)
        start = max(0, size - suffix)
        return (416, 0, b"") if suffix == 0 else (206, start, DATA[start:])
    if int(first) >= size:
        return 416, 0, b""
    end = size if not last else min(int(last) + 1, size)
    return 206, int(first), DATA[int(first) : end]


@pytest.fixture(scope="module")
def ranged(served: Served) -> str:
    assert httpx.put(f"{served.url}/objects/ranged", content=DATA).status_code == 201
    return "/objects/ranged"


@given(header=RANGE)
@FUZZ
def test_any_range_header(http: httpx.Client, ranged: str, header: str) -> None:
    response = http.get(ranged, headers={"Range": header})
    status, start, body = expected(header, len(DATA))
    assert response.status_code == status, (header, response.text[:200])
    if status == 206:
        assert response.content == body
        assert response.headers["content-range"] == (
            f"bytes {start}-{start + len(body) - 1}/{len(DATA)}"
        )
    elif status == 416:
        assert response.headers["content-range"] == f"bytes */{len(DATA)}"
    else:
        assert response.content == DATA


# --- hostile multipart bodies, written by hand ------------------------------------------


def part(headers: bytes, data: bytes) -> bytes:
    return b"--" + BOUNDARY + b"\r\n" + headers + b"\r\n\r\n" + data + b"\r\n"


def file_headers(name: str) -> bytes:
    return b'Content-Disposition: form-data; name="file"; filename="%s"' % name.encode()


END = b"--" + BOUNDARY + b"--\r\n"
NESTED = (
    b"--inner\r\nContent-Type: text/plain\r\n\r\nnested one\r\n"
    b"--inner\r\nContent-Type: text/plain\r\n\r\nnested two\r\n--inner--\r\n"
)
TINY_FILES = b"".join(part(file_headers(f"t{n}"), b"x") for n in range(10_000)) + END
TINY_FIELDS = b"".join(
    part(b'Content-Disposition: form-data; name="f"', b"") for _ in range(10_000)
)

HOSTILE: list[tuple[str, bytes, bytes, int, dict[str, bytes]]] = [
    # name, content type, body, status, what must then be stored
    ("no boundary", b"multipart/form-data", part(file_headers("a"), b"a") + END, 400, {}),
    ("empty boundary", b"multipart/form-data; boundary=", END, 400, {}),
    ("boundary too long", b"multipart/form-data; boundary=" + b"b" * 300, END, 400, {}),
    ("not a form", b"text/plain", b"hello", 400, {}),
    ("no closing boundary", b"", part(file_headers("cut"), b"data"), 400, {}),
    ("no parts at all", b"", END, 400, {}),
    ("no content-disposition", b"", part(b"Content-Type: text/plain", b"x") + END, 400, {}),
    ("10,000 tiny files", b"", TINY_FILES, 400, {}),
    ("10,000 empty fields", b"", TINY_FIELDS + part(file_headers("late"), b"z") + END, 400, {}),
    ("a huge part header", b"", part(b"X-Big: " + b"h" * 100_000, b"x") + END, 400, {}),
    ("a thousand part headers", b"", part(b"\r\n".join([b"X-H: v"] * 1000), b"x") + END, 400, {}),
    (
        "a key field of 1 MiB",
        b"",
        part(b'Content-Disposition: form-data; name="key"', b"k" * MiB) + END,
        400,
        {},
    ),
    (
        "nested multipart is a file's bytes",
        b"",
        part(file_headers("nested") + b"\r\nContent-Type: multipart/mixed; boundary=inner", NESTED)
        + END,
        201,
        {"nested": NESTED},
    ),
    (
        "an epilogue after the end",
        b"",
        part(file_headers("epilogue"), b"e") + END + b"trailing garbage" * 1000,
        201,
        {"epilogue": b"e"},
    ),
    (
        "the boundary inside the data, almost",
        b"",
        part(file_headers("almost"), b"\r\n--" + BOUNDARY[:-1] + b"X\r\n--") + END,
        201,
        {"almost": b"\r\n--" + BOUNDARY[:-1] + b"X\r\n--"},
    ),
]


def send_form(served: Served, content_type: bytes, body: bytes, piece: int | None = None) -> bytes:
    content_type = content_type or b"multipart/form-data; boundary=" + BOUNDARY
    head = (
        b"POST /objects HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n" % (content_type, len(body))
    )
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(head)
        try:
            if piece is None:
                sock.sendall(body)
            else:  # a few bytes a write, so that boundaries arrive split across reads
                for at in range(0, len(body), piece):
                    sock.sendall(body[at : at + piece])
                    time.sleep(0.0005)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the end of the body, as it may be
        return read_response(sock)


@pytest.mark.parametrize(
    ("content_type", "body", "status", "stored"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_multipart(
    served: Served, content_type: bytes, body: bytes, status: int, stored: dict[str, bytes]
) -> None:
    before = set(served.stored_keys())
    answer = send_form(served, content_type, body)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:300]
    if status >= 400:
        assert b"application/problem+json" in answer
    served.assert_clean("a", "cut", "late", "t0", "t999")
    assert set(served.stored_keys()) - before == set(stored)
    for key, data in stored.items():
        assert httpx.get(f"{served.url}/objects/{key}").content == data
        assert httpx.delete(f"{served.url}/objects/{key}").status_code == 204
    served.assert_serves()


@pytest.mark.parametrize("piece", [1, 7, 45])
def test_boundaries_split_across_reads(served: Served, piece: int) -> None:
    one, two = os.urandom(3000), os.urandom(5)
    body = part(file_headers("one"), one) + part(file_headers("two"), two) + END
    answer = send_form(served, b"", body, piece)
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:300]
    assert httpx.get(f"{served.url}/objects/one").content == one
    assert httpx.get(f"{served.url}/objects/two").content == two
    for key in ("one", "two"):
        assert httpx.delete(f"{served.url}/objects/{key}").status_code == 204
    served.assert_clean()


def test_a_wrong_method_names_every_method_of_the_path(http: httpx.Client) -> None:
    for path, allowed in [
        ("/objects", "GET, POST"),
        ("/objects/a", "DELETE, GET, HEAD, POST, PUT"),
    ]:
        response = http.request("PATCH", path)
        assert response.status_code == 405 and response.headers["allow"] == allowed


def test_an_unparsable_request_gets_a_problem(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(b"GET /objects HTTP/1.1\r\nHost: x\r\nContent-Length: ]X\r\n\r\n")
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"application/problem+json" in answer


# --- tus headers ------------------------------------------------------------------------

HEADER_VALUE = st.one_of(
    st.integers(-5, 2**70).map(str),
    st.sampled_from(["", "1", "0", "1.0.0", "0.2.2", "sha1 " + "A" * 28, "md5 !!", "+1", "0x1"]),
    st.from_regex(r"[!-~][ -~]{0,40}", fullmatch=True).map(str.strip),
)
TUS_HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "Tus-Resumable",
            "Upload-Length",
            "Upload-Offset",
            "Upload-Defer-Length",
            "Upload-Metadata",
            "Upload-Checksum",
            "Upload-Concat",
            "Content-Type",
        ]
    ),
    HEADER_VALUE,
)


@pytest.fixture(scope="module")
def tus_upload(served: Served) -> str:
    return tus.create(served.url, 10, "tus-fuzzed")


@given(
    headers=TUS_HEADERS,
    body=st.binary(max_size=20),
    method=st.sampled_from(["POST", "PATCH", "HEAD"]),
)
@FUZZ
def test_any_tus_headers(
    served: Served,
    http: httpx.Client,
    tus_upload: str,
    headers: dict[str, str],
    body: bytes,
    method: str,
) -> None:
    url = "/uploads/" if method == "POST" else tus_upload.removeprefix(served.url)
    content = body if method != "HEAD" else None
    response = http.request(method, url, headers=headers, content=content)
    assert response.status_code < 500, response.text
    assert response.headers.get("tus-resumable") == "1.0.0"
    if response.status_code >= 400 and method != "HEAD":
        assert response.headers["content-type"] == "application/problem+json", response.text
    state = http.head(tus_upload, headers=tus.TUS)
    assert state.status_code == 200
    assert 0 <= int(state.headers["upload-offset"]) <= 10
