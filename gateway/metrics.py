"""The gateway's Prometheus metrics, and their text for GET /metrics.

With several worker processes (`gateway serve --workers N`) each worker keeps its values in
files under `PROMETHEUS_MULTIPROC_DIR` (prometheus-client's multiprocess mode) and /metrics
adds up those of every worker. The variable has to be set before this module is first
imported in a worker, which `gateway serve` sees to.
"""

import os
from typing import Literal

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import disable_created_metrics

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# One `_created` series beside every counter doubles what is scraped and says little here.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Uploads of several GiB take minutes: the buckets reach an hour.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
BACKEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

BACKEND_OPERATIONS = (
    "put",
    "stage",
    "commit",
    "open",
    "stat",
    "delete",
    "list",
    "check",
    "upload_create",
    "upload_info",
    "upload_append",
    "upload_terminate",
    "upload_sweep",
)
TusEvent = Literal["created", "finished", "terminated", "expired"]
TUS_EVENTS: tuple[TusEvent, ...] = ("created", "finished", "terminated", "expired")

REQUESTS = Counter(
    "gateway_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from a request's arrival to the end of its response.",
    ["route", "method"],
    buckets=REQUEST_BUCKETS,
)
BYTES_RECEIVED = Counter("gateway_bytes_received_total", "Request body bytes received.")
BYTES_SENT = Counter("gateway_bytes_sent_total", "Response body bytes sent.")
UPLOADS_IN_PROGRESS = Gauge(
    "gateway_uploads_in_progress",
    "Upload requests in flight (PUT and POST on /objects and /upload/, POST and PATCH on "
    "/uploads/).",
    multiprocess_mode="livesum",
)
BACKEND_DURATION = Histogram(
    "gateway_backend_duration_seconds",
    "Time spent in storage backend calls (put and stage include receiving the body; open "
    "lasts until the object is open, not until it is read).",
    ["operation"],
    buckets=BACKEND_BUCKETS,
)
BACKEND_ERRORS = Counter(
    "gateway_backend_errors_total",
    "Storage backend calls that failed on the backend's side.",
    ["operation"],
)
TUS_UPLOADS = Counter(
    "gateway_tus_uploads_total",
    "Resumable (tus) uploads, by event: created, finished, terminated, expired.",
    ["event"],
)

# Series that exist from the start read 0 rather than missing, which alerts and rate() like.
for _operation in BACKEND_OPERATIONS:
    BACKEND_DURATION.labels(_operation)
    BACKEND_ERRORS.labels(_operation)
for _event in TUS_EVENTS:
    TUS_UPLOADS.labels(_event)


def tus_event(event: TusEvent) -> None:
    """Count one event in the life of a resumable upload: call it when an upload is
    `created` (POST /uploads/), `finished` (its last byte stored and the object committed),
    `terminated` (DELETE) or `expired` (removed by the sweep)."""
    if event not in TUS_EVENTS:
        raise ValueError(f"unknown tus event {event!r}")
    TUS_UPLOADS.labels(event).inc()


def render() -> bytes:
    """The text exposition of every metric; in multiprocess mode, every worker's summed.
    Reads files in that mode: call it from a thread."""
    if MULTIPROC_ENV not in os.environ:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def process_exited() -> None:
    """A worker stops: its in-flight gauge no longer counts (counters keep its totals)."""
    if MULTIPROC_ENV in os.environ:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
