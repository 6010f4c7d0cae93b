import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.cli import build_parser, load_settings
from gateway.settings import Settings


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
