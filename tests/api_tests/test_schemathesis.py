"""schemathesis against the served schema on a live server, once per persona:
no 5xx, and every response matches the schema it documents (errors included).
Bounded: a few examples per operation and a wall-clock limit on each run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from accounts import services as account_services
from accounts.models import AuditEvent
from tests.factories import make_case, make_prediction

ROOT = Path(__file__).resolve().parents[2]
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture
def served(live_server, settings, clinician, physician, admin_user, active_model):  # type: ignore[no-untyped-def]
    # The fuzzer sends hundreds of requests a minute; the throttle is tested elsewhere.
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"anon": "100000/minute", "user": "100000/minute", "token": "100000/minute"},
    }
    case = make_case(clinician, ref="PSN-FUZZ")
    prediction = make_prediction(clinician, active_model, [0.4, 0.6], ref="PSN-FUZZ-2", color=(9, 9, 9))
    scan = case.scans.get()
    # Real ids for the path parameters, so the fuzzer also reaches objects that exist
    # (and their 200 responses are checked against the schema), not only 404s.
    ids = {
        "case_uuid": case.uuid,
        "scan_uuid": scan.uuid,
        "job_uuid": scan.job.uuid,
        "item_uuid": prediction.review_item.uuid,
        "model_uuid": active_model.uuid,
        "event_uuid": AuditEvent.objects.first().uuid,  # type: ignore[union-attr]
    }
    return live_server, ids


@pytest.mark.parametrize("persona", ["clinician", "physician", "admin_user"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(served, request, persona, tmp_path):
    server, ids = served
    user = request.getfixturevalue(persona)
    token, key = account_services.api_token_create(acting_user=None, user=user, name="schemathesis", expires_in_days=1)
    ids["token_uuid"] = token.uuid
    (tmp_path / "schemathesis.toml").write_text(
        "[parameters]\n" + "".join(f'"path.{name}" = "{value}"\n' for name, value in ids.items())
    )
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{server.url}/api/v1/schema/",
        "--header",
        f"Authorization: Token {key}",
        "--checks",
        CHECKS,
        "--max-examples",
        "5",
        "--phases",
        "examples,fuzzing",
        "--workers",
        "1",
        "--seed",
        "7",
        "--request-timeout",
        "60",
        "--generation-database",
        "none",
        "--no-color",
        # A token revoked by the fuzzer (DELETE /tokens/{id}/ with our own id) would end the run early.
        "--exclude-method",
        "DELETE",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.api_tests.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert "No issues found" in output or "passed" in output, output[-3000:]
