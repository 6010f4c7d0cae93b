import pytest

from gateway.errors import BadRequest, InvalidKey
from gateway.keys import decode_path_key, key_for_filename, sanitize_filename, validate_key


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "a/b",
        "photos/2026/cat.jpg",
        "ünïcödé/日本語",
        "with space",
        "a.b",
        "...",
        "a/.x",
        "x" * 1024,
        "é" * 512,
        "trailing.",
        "semi;colon?&=#",
    ],
)
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/a",
        "a/",
        "a//b",
        ".",
        "..",
        "a/./b",
        "a/../b",
        "../etc/passwd",
        "a\\b",
        "a\x00b",
        "a\nb",
        "tab\there",
        "del\x7f",
        "x" * 1025,
        "é" * 513,
        "/",
    ],
)
def test_invalid_keys(key: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b"a%2Fb", "a/b"),
        (b"caf%C3%A9", "café"),
        (b"a%20b", "a b"),
        (b"plain", "plain"),
        (b"%E6%97%A5", "日"),
    ],
)
def test_decode_path_key(raw: bytes, key: str) -> None:
    assert decode_path_key(raw) == key


@pytest.mark.parametrize(
    "raw", [b"%zz", b"a%4", b"%", b"%FF", b"%C3", b"a%2F..%2Fb", b"%00", b"%2Fa", b"a%5Cb"]
)
def test_decode_path_key_rejects(raw: bytes) -> None:
    with pytest.raises(InvalidKey):
        decode_path_key(raw)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("C:\\Users\\me\\report.pdf", "report.pdf"),
        ("../../etc/passwd", "passwd"),
        ("dir/sub\\file.txt", "file.txt"),
        ("dir/", ""),
    ],
)
def test_sanitize_filename(filename: str, expected: str) -> None:
    assert sanitize_filename(filename) == expected


def test_key_for_filename() -> None:
    assert key_for_filename("C:\\x\\a.txt", "up/") == "up/a.txt"
    with pytest.raises(BadRequest):
        key_for_filename("dir/", "")
    with pytest.raises(BadRequest):
        key_for_filename(None)
    with pytest.raises(InvalidKey):
        key_for_filename("..")
