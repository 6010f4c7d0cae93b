"""JSON shapes of the API, for the OpenAPI page (routes build their bodies directly)."""

from typing import Any

from pydantic import BaseModel, Field


class ObjectInfoModel(BaseModel):
    key: str
    size: int
    etag: str = Field(description="strong, quoted: the SHA-256 of the body")
    sha256: str
    content_type: str
    last_modified: str = Field(description="RFC 3339, UTC")
    filename: str | None
    metadata: dict[str, str]


class ObjectsModel(BaseModel):
    objects: list[ObjectInfoModel]


class ListingModel(BaseModel):
    objects: list[ObjectInfoModel]
    prefixes: list[str]
    next_cursor: str | None


class CompatUploadModel(BaseModel):
    filename: str
    message: str
    object: ObjectInfoModel


class ProblemModel(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {"model": ProblemModel, "content": {"application/problem+json": {}}}
        for status in statuses
    }


RAW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def form_body(*, key_fields: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
        if key_fields
        else {"type": "string", "format": "binary"},
    }
    if key_fields:
        properties = {
            "prefix": {"type": "string", "description": "key = prefix + filename"},
            "key": {"type": "string", "description": "exact key (one file only)"},
            **properties,
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": properties,
                        "required": ["file"],
                    }
                }
            },
        }
    }
