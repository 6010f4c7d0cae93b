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


# An object's bytes go out with the Content-Type it was stored with, whatever that is.
OBJECT_BYTES: dict[str, Any] = {
    "description": "the object's bytes, with its own Content-Type",
    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
}

RAW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,  # no body stores an empty object
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


def key_parameter(name: str = "key") -> dict[str, Any]:
    """The `{key}` of a route's path, which the route reads from the raw path itself."""
    return {
        "parameters": [
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": "the object's key, percent-encoded where needed",
                "schema": {"type": "string", "minLength": 1},
            }
        ]
    }


def object_links(key: str) -> dict[str, Any]:
    """OpenAPI links from a response naming an object (`key`, a JSON pointer into its body)
    to the operations on that object, for clients and for stateful testing."""
    return {
        "links": {
            name: {"operationId": operation, "parameters": {"key": f"$response.body#{key}"}}
            for name, operation in [
                ("GetObject", "get_object"),
                ("HeadObject", "head_object"),
                ("DeleteObject", "delete_object"),
            ]
        }
    }
