"""Breaking-change check between the committed OpenAPI schema and the one the code
serves: a client written against the committed file must keep working.

Breaking: a path or operation removed; a new required parameter or request field;
a response status, response field removed, or a field's type changed; a request
field's type changed. Additions are not breaking."""

from __future__ import annotations

from typing import Any

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _resolve(schema: dict[str, Any] | None, doc: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    if not schema or depth > 20:
        return {}
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        return _resolve(doc.get("components", {}).get("schemas", {}).get(name), doc, depth + 1)
    if "allOf" in schema:
        merged: dict[str, Any] = {"properties": {}, "required": []}
        for part in schema["allOf"]:
            sub = _resolve(part, doc, depth + 1)
            merged["properties"].update(sub.get("properties", {}))
            merged["required"] += sub.get("required", [])
            merged.setdefault("type", sub.get("type"))
        return merged
    return schema


def _kind(schema: dict[str, Any]) -> str | None:
    return schema.get("type") or ("object" if "properties" in schema else None)


def _compare_fields(
    old: dict[str, Any],
    new: dict[str, Any],
    old_doc: dict[str, Any],
    new_doc: dict[str, Any],
    where: str,
    *,
    request: bool,
) -> list[str]:
    problems: list[str] = []
    old_s, new_s = _resolve(old, old_doc), _resolve(new, new_doc)
    if _kind(old_s) and _kind(new_s) and _kind(old_s) != _kind(new_s):
        return [f"{where}: type changed from {_kind(old_s)} to {_kind(new_s)}"]
    if _kind(old_s) == "array":
        return _compare_fields(
            old_s.get("items", {}), new_s.get("items", {}), old_doc, new_doc, f"{where}[]", request=request
        )
    old_props, new_props = old_s.get("properties", {}), new_s.get("properties", {})
    if request:
        for name in set(new_s.get("required", [])) - set(old_s.get("required", [])):
            problems.append(f"{where}: new required request field {name!r}")
    for name, old_prop in old_props.items():
        if name not in new_props:
            if not request:
                problems.append(f"{where}: response field {name!r} removed")
            continue
        problems += _compare_fields(old_prop, new_props[name], old_doc, new_doc, f"{where}.{name}", request=request)
    return problems


def _json_schema(body: dict[str, Any] | None) -> dict[str, Any]:
    content = (body or {}).get("content", {})
    for media in ("application/json", "multipart/form-data"):
        if media in content:
            return content[media].get("schema", {})
    return {}


def breaking_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for path, old_item in old.get("paths", {}).items():
        new_item = new.get("paths", {}).get(path)
        if new_item is None:
            problems.append(f"path removed: {path}")
            continue
        for method in METHODS:
            if method not in old_item:
                continue
            where = f"{method.upper()} {path}"
            if method not in new_item:
                problems.append(f"operation removed: {where}")
                continue
            old_op, new_op = old_item[method], new_item[method]
            old_params = {(p["in"], p["name"]) for p in old_op.get("parameters", [])}
            for param in new_op.get("parameters", []):
                if param.get("required") and (param["in"], param["name"]) not in old_params:
                    problems.append(f"{where}: new required parameter {param['name']!r}")
            if new_op.get("requestBody", {}).get("required") and not old_op.get("requestBody", {}).get("required"):
                problems.append(f"{where}: request body became required")
            problems += _compare_fields(
                _json_schema(old_op.get("requestBody")),
                _json_schema(new_op.get("requestBody")),
                old,
                new,
                f"{where} request",
                request=True,
            )
            for code, old_resp in old_op.get("responses", {}).items():
                new_resp = new_op.get("responses", {}).get(code)
                if new_resp is None:
                    problems.append(f"{where}: response {code} removed")
                    continue
                problems += _compare_fields(
                    _json_schema(old_resp), _json_schema(new_resp), old, new, f"{where} {code}", request=False
                )
    return problems
