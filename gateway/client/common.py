"""What uploads and downloads share: errors as exit codes, the connection, state files kept
between runs, retries, the rate limit and the progress bars."""

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .. import __version__
from . import ExitCode

T = TypeVar("T")


class ClientError(Exception):
    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def refusal(response: httpx.Response, what: str) -> ClientError:
    """The error for an answer the client cannot go on from, with the gateway's words."""
    status = response.status_code
    detail = ""
    if status >= 400 and not response.is_closed:
        response.read()  # a streamed answer: its problem+json is small
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        with contextlib.suppress(ValueError, AttributeError):
            detail = str(response.json().get("detail") or "")
    detail = detail or response.reason_phrase
    if status == 401 and "authorization" not in response.request.headers:
        detail += " Give a token with --token or GATEWAY_TOKEN."
    if status in (404, 410):
        code = ExitCode.NOT_FOUND
    elif 400 <= status < 500 and status not in (408, 423, 429):
        code = ExitCode.REFUSED
    else:
        code = ExitCode.UNAVAILABLE
    return ClientError(f"{what}: {status} {detail}", code)


def unreachable(problem: Exception) -> ClientError:
    return ClientError(f"the gateway cannot be reached: {problem}", ExitCode.UNAVAILABLE)


class Connection:
    def __init__(self, url: str, token: str | None) -> None:
        self.base = url.rstrip("/") + "/"
        headers = {"User-Agent": f"gateway-client/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        # The read timeout bounds a pause between two reads, not a whole transfer.
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(60, connect=10))

    def url(self, path: str) -> str:
        return self.base + path

    def object_url(self, key: str) -> str:
        return self.url("objects/" + quote(key, safe="/"))

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()


class Retry:
    """Waits 1, 2, 4, ... (at most 10) seconds between tries, `attempts` times in a row."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        self.reset()

    def reset(self) -> None:
        self.left, self.delay = self.attempts, 1.0

    def call(self, request: Callable[[], T]) -> T:
        """`request()`, tried again while the connection fails or the gateway answers 5xx."""
        while True:
            try:
                return request()
            except httpx.TransportError as problem:
                self.wait(problem)
            except ClientError as problem:
                if problem.code != ExitCode.UNAVAILABLE:
                    raise
                self.wait(problem)

    def wait(self, problem: Exception) -> None:
        """Sleep before the next try; raise when no try is left."""
        if self.left <= 0:
            raise problem if isinstance(problem, ClientError) else unreachable(problem)
        self.left -= 1
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, 10.0)


class Throttle:
    """Keeps a transfer at `rate` bytes a second at most (`--limit-rate`). Time in which
    nothing moved (an answer slow to come, a retry's wait) is not made up afterwards with
    a burst above the rate."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.free_at = 0.0  # when the bytes moved so far may have taken at `rate`

    def __call__(self, size: int) -> None:
        """`size` bytes have moved: wait as long as they take at `rate`."""
        if not self.rate:
            return
        self.free_at = max(self.free_at, time.monotonic()) + size / self.rate
        ahead = self.free_at - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


class StateFile:
    """A small JSON file under the user's cache folder, named by a fingerprint, that lets
    the next run of the same command pick up where this one stopped."""

    def __init__(self, kind: str, fingerprint: object) -> None:
        name = hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:32]
        self.path = state_dir() / kind / f"{name}.json"

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Written aside and renamed, so that a kill leaves the old state or the new one.
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False) as out:
            json.dump(data, out)
        Path(out.name).replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def state_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "gateway"


class SpeedColumn(ProgressColumn):
    """The speed in the binary units of the size beside it (rich's own is decimal)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{human(speed)}/s" if speed is not None else "?", style="progress.data.speed")


class Output:
    """Progress bars and notes on stderr, results on stdout; only errors when quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.err = Console(stderr=True, highlight=False)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            SpeedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            disable=quiet,
        )

    @contextlib.contextmanager
    def running(self) -> Iterator["Output"]:
        with self.progress:
            yield self

    def note(self, text: str) -> None:
        if not self.quiet:
            self.progress.console.print(text, markup=False)

    def result(self, text: str) -> None:
        # print(), not a Console: on a terminal, rich's live display takes it in and shows
        # it above the bars; piped, it goes to stdout as is.
        if not self.quiet:
            print(text, flush=True)

    def error(self, text: str) -> None:
        self.err.print(text, markup=False, style="red")


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
