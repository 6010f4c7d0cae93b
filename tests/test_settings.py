import hashlib
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.cli import build_parser, load_settings
from gateway.settings import Settings
from gateway.tokens import TokenStore


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"GATEWAY_{name.upper()}", raising=False)
    settings = Settings()
    assert (settings.backend, settings.host, settings.port) == ("local", "127.0.0.1", 8000)
    assert settings.data_dir == Path("data")
    assert int(settings.max_upload_bytes) == 5 * 1024**3
    assert int(settings.s3_part_size) == 8 * 1024**2
    assert settings.upload_expiry == timedelta(hours=24)
    assert (settings.workers, settings.log_level, settings.log_format) == (1, "info", "text")
    assert settings.shutdown_grace == timedelta(seconds=30)
    assert settings.shutdown_drain == timedelta(0)


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MAX_UPLOAD_BYTES", "8MiB")
    monkeypatch.setenv("GATEWAY_S3_PART_SIZE", "16MiB")
    monkeypatch.setenv("GATEWAY_UPLOAD_EXPIRY", "30m")
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("GATEWAY_BACKEND", "s3")
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "json")
    monkeypatch.setenv("GATEWAY_SHUTDOWN_GRACE", "2m")
    settings = Settings()
    assert settings.log_format == "json" and settings.shutdown_grace == timedelta(minutes=2)
    assert int(settings.max_upload_bytes) == 8 * 1024**2
    assert int(settings.s3_part_size) == 16 * 1024**2
    assert settings.upload_expiry == timedelta(minutes=30)
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.backend == "s3"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backend", "ftp"),
        ("s3_part_size", "1MiB"),
        ("max_upload_bytes", "lots"),
        ("port", "70000"),
        ("upload_expiry", "0"),
        ("s3_addressing_style", "sideways"),
    ],
)
def test_invalid_values(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        Settings.model_validate({field: value})


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9000")
    monkeypatch.setenv("GATEWAY_DATA_DIR", "/from/env")
    args = build_parser().parse_args(
        ["serve", "--port", "9100", "--max-upload-bytes", "1GiB", "--allow-anonymous"]
    )
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    settings = load_settings(overrides)
    assert settings.port == 9100 and settings.data_dir == Path("/from/env")
    assert int(settings.max_upload_bytes) == 1024**3 and settings.allow_anonymous


def test_every_setting_has_a_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    help_text = result.stdout
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in help_text


def test_bad_flags_exit_with_a_message() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--s3-part-size", "1KiB"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--s3-part-size" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "key",
    [
        "too-short-0123456789",
        "changeme",
        "changemechangemechangemechangeme",
        "my-secret-signing-key-0123456789abcdef",
        "PLACEHOLDER-PLACEHOLDER-PLACEHOLDER",
        "a" * 64,
        "abababababababababababababababababab",
    ],
)
def test_weak_signing_keys_are_refused(key: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(signing_key=key)
    assert "openssl rand" in str(refused.value)


def test_a_random_signing_key_is_taken() -> None:
    key = "3f9a0c7e1b5d2a8f6e4c0b9d7a5f3e1c"
    settings = Settings(signing_key=key)
    assert settings.signing_key is not None
    assert settings.signing_key.get_secret_value() == key
    assert key not in repr(settings)


def run_token_create(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "token", "create", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_create_prints_the_token_and_its_entry() -> None:
    result = run_token_create("--scopes", "read,list", "--prefix", "tenant-a/")
    assert result.returncode == 0, result.stderr
    token, entry_line = result.stdout.splitlines()
    entry = json.loads(entry_line)
    assert len(token) >= 40
    assert entry == {
        "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
        "scopes": ["read", "list"],
        "prefix": "tenant-a/",
    }
    again = run_token_create("--scopes", "read", "--clear", "--name", "backup job")
    token2, entry2 = again.stdout.splitlines()
    assert token2 != token
    assert json.loads(entry2) == {
        "token": token2,
        "scopes": ["read"],
        "prefix": "",
        "name": "backup job",
    }


def test_token_create_adds_to_a_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    made = [
        run_token_create("--scopes", scopes, "--file", str(path)) for scopes in ("read", "write")
    ]
    assert all(result.returncode == 0 for result in made)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    store = TokenStore(path)
    read_token, write_token = (result.stdout.splitlines()[0] for result in made)
    assert (reader := store.lookup(read_token)) and reader.scopes == {"read"}
    assert (writer := store.lookup(write_token)) and writer.scopes == {"write"}
    assert read_token not in path.read_text()


@pytest.mark.parametrize(
    "args", [["--scopes", "read,fly"], ["--scopes", ""], ["--scopes", "read", "--prefix", "/a"]]
)
def test_token_create_refuses_bad_entries(args: list[str]) -> None:
    result = run_token_create(*args)
    assert result.returncode != 0 and result.stdout == ""
    assert "Traceback" not in result.stderr


def test_token_create_leaves_a_broken_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text('{"tokens": [')
    result = run_token_create("--scopes", "read", "--file", str(path))
    assert result.returncode != 0 and "cannot add" in result.stderr
    assert path.read_text() == '{"tokens": ['
