"""The application factory."""

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__, problems
from .auth import Access
from .cors import GatewayCORS
from .routes import compat, health, objects, presign
from .settings import Settings
from .storage import open_storage


def create_app(settings: Settings | None = None) -> FastAPI:
    """Raises TokensFileError when the tokens file cannot be used."""
    settings = settings or Settings()
    access = Access.from_settings(settings)
    storage = open_storage(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with storage:
            with access.tokens.reloading_on_sighup() if access.tokens else contextlib.nullcontext():
                yield

    app = FastAPI(
        title="gateway",
        version=__version__,
        summary="Streams uploads of any size into storage, and back out.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.storage = storage
    app.state.access = access
    problems.install(app)
    for module in (objects, compat, presign, health):
        app.include_router(module.router)
    if settings.cors_origins:
        app.add_middleware(GatewayCORS, origins=settings.cors_origins)
    return app
