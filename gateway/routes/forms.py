"""multipart/form-data uploads, shared by POST /objects and the compatibility POST /upload/."""

import asyncio
import contextlib

from fastapi import Request

from ..errors import BadRequest
from ..formdata import FormReader
from ..intake import client_bytearrays, guess_type, limited
from ..keys import key_for_filename, sanitize_filename, validate_key
from ..observe import note_keys
from ..storage.base import ObjectInfo, Staged, Storage, WriteSpec
from ..tokens import Principal

FILE_FIELD = "file"


async def store_form(
    request: Request,
    storage: Storage,
    limit: int,
    principal: Principal,
    *,
    fields: bool,
    max_files: int | None = None,
    key: str | None = None,
) -> list[ObjectInfo]:
    """Stage every file part as it streams in, then commit them all: a request stores all of
    its files or none. A file's key is `key` if given; else, with `fields`, text fields
    `prefix` or `key` before the files name them; else it is its sanitized filename.
    Each key must be the `principal`'s to write before a byte of its file is stored."""
    form = FormReader(client_bytearrays(request), request.headers.get("content-type"))
    staged: list[Staged] = []
    prefix, exact_key = "", key
    try:
        async for part in form:
            if part.name != FILE_FIELD:
                if part.filename is not None:
                    raise BadRequest(f"File parts must be named {FILE_FIELD!r}.")
                if fields and part.name in ("prefix", "key"):
                    if staged:
                        raise BadRequest(f"The {part.name!r} field must come before the files.")
                    value = await part.text()
                    if part.name == "key":
                        exact_key = validate_key(value)
                    else:
                        prefix = value
                continue
            if max_files is not None and len(staged) >= max_files:
                raise BadRequest(f"This endpoint takes at most {max_files} file(s).")
            if exact_key is not None and staged:
                raise BadRequest("With a 'key' field, a request may hold one file only.")
            part_key = exact_key or key_for_filename(part.filename, prefix)
            principal.require("write", part_key)
            filename = sanitize_filename(part.filename) if part.filename else None
            spec = WriteSpec(
                content_type=part.content_type or guess_type(part_key),
                filename=filename or None,
                grouped=True,
            )
            staged.append(await storage.stage(part_key, limited(part.chunks(), limit), spec))
        if not staged:
            raise BadRequest(f"The form holds no file part named {FILE_FIELD!r}.")
    except BaseException:
        await asyncio.shield(_discard_all(staged))
        raise
    stored = await _commit_all(storage, staged)
    note_keys(request, (info.key for info in stored))
    return stored


async def _commit_all(storage: Storage, staged: list[Staged]) -> list[ObjectInfo]:
    committed: list[ObjectInfo] = []
    try:
        for item in staged:
            committed.append(await item.commit())
    except BaseException:
        # A backend failure between two commits: take back the ones that went through,
        # all of them even if the request is cancelled meanwhile.
        await asyncio.shield(_take_back(storage, staged[len(committed) :], committed))
        raise
    return committed


async def _take_back(storage: Storage, staged: list[Staged], committed: list[ObjectInfo]) -> None:
    await _discard_all(staged)
    for info in committed:
        with contextlib.suppress(Exception):
            await storage.delete(info.key)


async def _discard_all(staged: list[Staged]) -> None:
    """Discard every staged object, whichever of them fails (run shielded: a cancelled
    request still gives back all that its files held)."""
    for item in staged:
        with contextlib.suppress(Exception):
            await item.discard()
