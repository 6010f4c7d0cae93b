"""Every setting of the gateway, read from `GATEWAY_*` environment variables.

`gateway serve` maps its flags onto the same fields, so one object describes a running
gateway whichever way it was configured.
"""

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, ByteSize, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024
GiB = 1024 * MiB

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> object:
    """Accept `90`, `90s`, `30m`, `24h`, `7d` besides what pydantic takes for a timedelta."""
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=int(match[1]) * _UNIT_SECONDS[match[2]])
    return value


def parse_list(value: object) -> object:
    """Comma-separated lists in the environment: `GATEWAY_CORS_ORIGINS=https://a,https://b`."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


MIN_SECRET_BYTES = 32
# Words that mark a value copied from an example rather than generated.
_PLACEHOLDERS = re.compile(
    r"change[-_ ]?me|placeholder|replace[-_ ]?me|secret|password|example|insecure|dummy",
    re.IGNORECASE,
)


def refuse_weak_secret(value: str) -> None:
    how = "generate one with `openssl rand -hex 32`"
    if len(value.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes long: {how}")
    if _PLACEHOLDERS.search(value) or len(set(value)) < 8:
        raise ValueError(f"looks like a placeholder, not a random secret: {how}")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
CommaList = Annotated[list[str], NoDecode, BeforeValidator(parse_list)]


class Settings(BaseSettings):
    """The gateway's configuration. Sizes take units (`8MiB`, `5GiB`), durations `24h`."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    backend: Literal["local", "s3"] = Field("local", description="storage backend")
    data_dir: Path = Field(Path("./data"), description="local backend: where objects live")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    max_upload_bytes: ByteSize = Field(
        ByteSize(5 * GiB), gt=0, description="largest object an upload may store"
    )

    s3_bucket: str | None = Field(None, description="s3 backend: the bucket")
    s3_endpoint_url: str | None = Field(None, description="s3 backend: endpoint (MinIO, moto)")
    s3_region: str | None = Field(None, description="s3 backend: region")
    s3_addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="s3 backend: `path` for MinIO and most S3-compatible servers"
    )
    s3_part_size: ByteSize = Field(
        ByteSize(8 * MiB), ge=5 * MiB, le=5 * GiB, description="s3 backend: multipart part size"
    )
    s3_max_concurrency: int = Field(
        4, ge=1, le=64, description="s3 backend: parts in flight per upload"
    )
    s3_part_checksum: Literal["crc32", "md5"] = Field(
        "crc32", description="s3 backend: integrity check S3 verifies on every part"
    )
    s3_connect_timeout: Duration = Field(
        timedelta(seconds=5), description="s3 backend: longest wait for a connection to S3"
    )
    s3_read_timeout: Duration = Field(
        timedelta(seconds=20),
        description="s3 backend: longest silence of S3 while sending it a part or awaiting "
        "its answer",
    )
    s3_max_attempts: int = Field(
        3, ge=1, le=10, description="s3 backend: tries of each S3 call (botocore's retries)"
    )

    keep_alive_timeout: Duration = Field(
        timedelta(seconds=75),
        description="an idle connection is kept this long for the client's next request",
    )
    header_timeout: Duration = Field(
        timedelta(seconds=30),
        description="a request's line and headers must arrive within this time",
    )
    body_idle_timeout: Duration = Field(
        timedelta(seconds=60),
        description="an upload whose client sends too little for this long (waiting on the "
        "client only) is closed with 408",
    )
    body_min_rate: ByteSize = Field(
        ByteSize(1024),
        ge=0,
        description="bytes per second an upload must send on average over each "
        "BODY_IDLE_TIMEOUT (0: any byte will do)",
    )

    tokens_file: Path | None = Field(None, description="JSON file of bearer tokens")
    signing_key: SecretStr | None = Field(None, description="secret for presigned URLs")
    allow_anonymous: bool = Field(
        False, description="serve without tokens on a non-loopback address"
    )
    cors_origins: CommaList = Field(
        default_factory=list, description="origins allowed by CORS, comma-separated"
    )
    ui: bool = Field(True, description="serve the upload page at / (`--no-ui` turns it off)")
    upload_expiry: Duration = Field(
        timedelta(hours=24), description="resumable uploads idle this long are removed"
    )

    workers: int = Field(1, ge=1, le=64, description="worker processes serving the port")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="the least severe log records written (`info` has the access log)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines for people (`text`) or one JSON object a line (`json`)"
    )
    shutdown_drain: Duration = Field(
        timedelta(0), description="on SIGTERM, keep serving this long with /readyz at 503"
    )
    shutdown_grace: Duration = Field(
        timedelta(seconds=30), description="then wait this long for requests in flight"
    )

    @field_validator("signing_key")
    @classmethod
    def _strong_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            refuse_weak_secret(value.get_secret_value())
        return value

    @field_validator(
        "upload_expiry",
        "keep_alive_timeout",
        "header_timeout",
        "body_idle_timeout",
        "s3_connect_timeout",
        "s3_read_timeout",
    )
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("shutdown_drain", "shutdown_grace")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 0:
            raise ValueError("must not be negative")
        return value
