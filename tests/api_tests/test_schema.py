"""The served schema is the committed one, the docs page loads from local static
files, and the compatibility check catches what breaks clients."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from core.api.compat import breaking_changes
from core.management.commands.openapi_check import DEFAULT_FILE, current_schema


def _committed() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(DEFAULT_FILE.read_text())


@pytest.mark.django_db
def test_served_schema_is_valid_openapi_and_equals_the_committed_file():
    response = Client().get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    served = json.loads(response.content)
    assert served["openapi"].startswith("3.")
    assert served == current_schema()
    assert breaking_changes(_committed(), served) == []
    # Every operation documents the error shape and needs a login.
    for path, item in served["paths"].items():
        for method, op in item.items():
            assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }, (method, path)


@pytest.mark.django_db
def test_docs_page_uses_local_static_files_only():
    for url in ("/api/v1/docs/", "/api/v1/redoc/"):
        html = Client().get(url).content.decode()
        assert "/static/drf_spectacular_sidecar/" in html
        assert "cdn" not in html.lower()


def test_compat_check_reports_breaking_changes():
    old = _committed()
    new = copy.deepcopy(old)
    del new["paths"]["/api/v1/jobs/{job_uuid}/retry/"]
    del new["paths"]["/api/v1/tokens/{token_uuid}/"]["delete"]
    new["components"]["schemas"]["CaseCreateInRequest"]["required"].append("note")
    del new["components"]["schemas"]["JobOut"]["properties"]["status"]
    new["paths"]["/api/v1/cases/"]["get"]["parameters"].append(
        {"in": "query", "name": "unit", "required": True, "schema": {"type": "string"}}
    )
    problems = breaking_changes(old, new)
    assert "path removed: /api/v1/jobs/{job_uuid}/retry/" in problems
    assert "operation removed: DELETE /api/v1/tokens/{token_uuid}/" in problems
    assert "GET /api/v1/cases/: new required parameter 'unit'" in problems
    assert any("response field 'status' removed" in p for p in problems)
    assert any("new required request field 'note'" in p for p in problems)
    # Additions are not breaking.
    added = copy.deepcopy(old)
    added["paths"]["/api/v1/new/"] = {"get": {"responses": {}}}
    added["components"]["schemas"]["JobOut"]["properties"]["extra"] = {"type": "string"}
    assert breaking_changes(old, added) == []


def test_openapi_check_command_fails_on_a_breaking_change(tmp_path: Path):
    old = _committed()
    old["paths"]["/api/v1/removed-endpoint/"] = {"get": {"responses": {"200": {"description": "x"}}}}
    path = tmp_path / "openapi.yaml"
    path.write_text(yaml.safe_dump(old))
    with pytest.raises(CommandError, match="path removed: /api/v1/removed-endpoint/"):
        call_command("openapi_check", file=str(path))
    call_command("openapi_check")  # the committed file itself passes
