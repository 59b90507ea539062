"""drf-spectacular hooks: every operation documents the error shape for its 4xx answers."""

from __future__ import annotations

from typing import Any

FIELD_ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string", "description": "Stable machine-readable code, e.g. empty_file."},
        "message": {"type": "string"},
        "file": {"type": "string", "description": "The uploaded file's name, for upload errors."},
    },
}
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable machine-readable code."},
                "message": {"type": "string", "description": "Human-readable explanation."},
                "fields": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
                },
            },
        }
    },
}
ERROR_STATUSES = {
    "400": "Invalid input; `fields` names each problem.",
    "401": "Not authenticated, or the token is expired or revoked.",
    "403": "Your role may not do this.",
    "404": "No such object, or not one you may see.",
    "429": "Too many requests; see Retry-After.",
}


# The resumable-upload (tus) endpoints answer the protocol's own statuses as well.
TUS_STATUSES = {
    "409": "The offset does not match what the server has, or the upload is not in a state for this.",
    "410": "The upload expired or was cancelled; start it again.",
    "412": "The Tus-Resumable header is missing or names another protocol version.",
    "413": "The declared length is over the size cap.",
    "415": "The bytes must be sent as application/offset+octet-stream.",
}


def _is_tus(operation: dict[str, Any]) -> bool:
    return any(p.get("in") == "header" and p.get("name") == "Tus-Resumable" for p in operation.get("parameters", []))


def add_error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR
    schemas["FieldError"] = FIELD_ERROR
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            statuses = {**ERROR_STATUSES, **TUS_STATUSES} if _is_tus(operation) else ERROR_STATUSES
            for code, description in statuses.items():
                responses.setdefault(code, {"description": description, "content": ref})
    return result
