"""Storage backends, chosen by name; a backend's dependencies load only when it is chosen."""

import importlib
from typing import cast

from ..settings import Settings
from .base import Storage

BACKENDS = {
    "local": "gateway.storage.local:LocalStorage",
    "s3": "gateway.storage.s3:S3Storage",
}


def open_storage(settings: Settings) -> Storage:
    module_name, _, class_name = BACKENDS[settings.backend].partition(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    return cast(Storage, backend.from_settings(settings))
