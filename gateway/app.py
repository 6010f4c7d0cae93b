"""The application factory."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from . import __version__, metrics, problems
from .auth import Access
from .cors import GatewayCORS
from .lifecycle import Lifecycle
from .observe import Observe
from .routes import compat, health, objects, page, presign, uploads
from .routes import metrics as metrics_route
from .settings import Settings
from .storage import open_storage
from .storage.base import Storage

# Requests cut off at the end of the shutdown grace period are cancelled, not finished: they
# still remove their temporary files or abort their multipart uploads, which takes moments.
CLEANUP_TIMEOUT = 10.0
SWEEP_INTERVAL = 600.0  # at most; a quarter of the upload expiry when that is shorter
log = logging.getLogger("gateway")


class Gateway(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # Outermost, so that the 500s Starlette's error middleware sends are seen too.
        return Observe(super().build_middleware_stack(), self.state.lifecycle)


@asynccontextmanager
async def sweeping(storage: Storage, settings: Settings) -> AsyncIterator[None]:
    """Remove expired resumable uploads now and then, while the app runs."""
    if storage.uploads is None:
        yield
        return
    uploads = storage.uploads
    interval = min(settings.upload_expiry.total_seconds() / 4, SWEEP_INTERVAL)

    async def sweep_forever() -> None:
        while True:
            try:
                for _ in range(await uploads.sweep()):
                    metrics.tus_event("expired")
            except Exception:
                log.exception("sweeping expired uploads failed")
            await asyncio.sleep(interval)

    task = asyncio.create_task(sweep_forever())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_app(settings: Settings | None = None, *, handle_signals: bool = False) -> FastAPI:
    """The gateway as an ASGI app. With `handle_signals` (as `gateway serve` runs it), a
    SIGTERM first turns /readyz to 503 for `settings.shutdown_drain` (see gateway.lifecycle).
    Raises TokensFileError when the tokens file cannot be used."""
    settings = settings or Settings()
    access = Access.from_settings(settings)
    storage = open_storage(settings)
    lifecycle = Lifecycle(drain=settings.shutdown_drain.total_seconds())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        restore_signals = lifecycle.watch_signals() if handle_signals else None
        reloading = access.tokens.reloading_on_sighup() if access.tokens else None
        try:
            async with storage, sweeping(storage, settings):
                with reloading or contextlib.nullcontext():
                    yield
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLEANUP_TIMEOUT):
                        await lifecycle.wait_idle()
        finally:
            if restore_signals:
                restore_signals()
            metrics.process_exited()

    app = Gateway(
        title="gateway",
        version=__version__,
        summary="Streams uploads of any size into storage, and back out.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.storage = storage
    app.state.access = access
    app.state.lifecycle = lifecycle
    problems.install(app)
    for module in (objects, compat, uploads, presign, health, metrics_route):
        app.include_router(module.router)
    if settings.ui:
        app.include_router(page.router)
    app.add_middleware(uploads.MethodOverride)
    if settings.cors_origins:  # added last, so outside: preflights never reach the rest
        app.add_middleware(GatewayCORS, origins=settings.cors_origins)
    return app
