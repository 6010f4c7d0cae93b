"""Storage backends, chosen by name; a backend's dependencies load only when it is chosen."""

import importlib
from typing import cast

from ..settings import Settings
from .base import Storage
from .instrumented import InstrumentedStorage

BACKENDS = {
    "local": "gateway.storage.local:LocalStorage",
    "s3": "gateway.storage.s3:S3Storage",
}


def open_storage(settings: Settings) -> Storage:
    """The configured backend, its calls timed and counted (gateway_backend_* metrics)."""
    module_name, _, class_name = BACKENDS[settings.backend].partition(":")
    backend = getattr(importlib.import_module(module_name), class_name)
    return InstrumentedStorage(cast(Storage, backend.from_settings(settings)))
