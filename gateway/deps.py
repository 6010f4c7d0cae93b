"""FastAPI dependencies shared by the routers."""

from typing import Annotated, cast

from fastapi import Depends, Request

from .lifecycle import Lifecycle
from .settings import Settings
from .storage.base import Storage


# async: FastAPI runs a plain function dependency in a worker thread, at every request.
async def get_storage(request: Request) -> Storage:
    return cast(Storage, request.app.state.storage)


async def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


async def get_lifecycle(request: Request) -> Lifecycle:
    return cast(Lifecycle, request.app.state.lifecycle)


StorageDep = Annotated[Storage, Depends(get_storage)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
