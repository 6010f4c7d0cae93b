"""The application factory."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__, problems
from .routes import compat, health, objects
from .settings import Settings
from .storage import open_storage


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    storage = open_storage(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with storage:
            yield

    app = FastAPI(
        title="gateway",
        version=__version__,
        summary="Streams uploads of any size into storage, and back out.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.storage = storage
    problems.install(app)
    for module in (objects, compat, health):
        app.include_router(module.router)
    return app
