"""Every endpoint with the personas: anonymous 401, wrong role 403, somebody
else's (or no) object 404, own object 2xx. Always in the one error shape."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts import services as account_services
from diagnostics.services.integration import integration_account_create
from diagnostics.services.reviews import review_sign
from diagnostics.services.slides import slide_upload_create
from tests.factories import make_case, make_prediction
from tests.helpers import PASSWORD, api, image_bytes, login

pytestmark = pytest.mark.django_db


@dataclass
class Endpoint:
    name: str
    method: str
    url: str
    own: str  # the persona for whom the object is their own / the role is right
    status: int
    wrong: list[str]
    foreign: str | None = None  # persona of the right role for whom the object is somebody else's
    body: Callable[[], dict[str, Any]] | None = None
    multipart: bool = False
    missing_404: bool = True  # a random UUID in place of the object answers 404
    extra: dict[str, Any] = field(default_factory=dict)  # request headers, e.g. tus's
    raw: Callable[[], tuple[bytes, str]] | None = None  # (body, content type) sent as they are


def _upload_body() -> dict[str, Any]:
    return {"files": [SimpleUploadedFile("new.png", image_bytes(color=(1, 2, 3)), content_type="image/png")]}


CLINICAL_WRONG = ["admin_user", "outsider"]
REVIEW_WRONG = ["clinician", "admin_user", "outsider"]
ADMIN_WRONG = ["clinician", "physician", "outsider"]


def _stow_body() -> tuple[bytes, str]:
    from diagnostics.interop.dicomweb import encode_multipart
    from tests.diagnostics_tests.dicom_factory import dicom_bytes

    return encode_multipart([dicom_bytes()], boundary="b1"), 'multipart/related; type="application/dicom"; boundary=b1'


ENDPOINTS = [
    Endpoint("cases_list", "get", "/api/v1/cases/", "clinician", 200, CLINICAL_WRONG, missing_404=False),
    Endpoint(
        "cases_create",
        "post",
        "/api/v1/cases/",
        "clinician",
        201,
        CLINICAL_WRONG,
        body=lambda: {"patient_ref": "PSN-NEW", "body_site": "breast"},
        missing_404=False,
    ),
    Endpoint("case_detail", "get", "/api/v1/cases/{case}/", "clinician", 200, CLINICAL_WRONG, "other_clinician"),
    Endpoint("case_scans", "get", "/api/v1/cases/{case}/scans/", "clinician", 200, CLINICAL_WRONG, "other_clinician"),
    Endpoint(
        "case_upload",
        "post",
        "/api/v1/cases/{case}/scans/",
        "clinician",
        201,
        CLINICAL_WRONG,
        "other_clinician",
        body=_upload_body,
        multipart=True,
    ),
    Endpoint("scan_detail", "get", "/api/v1/scans/{scan}/", "clinician", 200, CLINICAL_WRONG, "other_clinician"),
    Endpoint("jobs_list", "get", "/api/v1/jobs/", "clinician", 200, CLINICAL_WRONG, missing_404=False),
    Endpoint("job_detail", "get", "/api/v1/jobs/{job}/", "clinician", 200, CLINICAL_WRONG, "other_clinician"),
    Endpoint(
        "job_retry", "post", "/api/v1/jobs/{failed_job}/retry/", "clinician", 200, CLINICAL_WRONG, "other_clinician"
    ),
    Endpoint("review_queue", "get", "/api/v1/review-queue/", "physician", 200, REVIEW_WRONG, missing_404=False),
    Endpoint("review_item", "get", "/api/v1/review-items/{item}/", "physician", 200, REVIEW_WRONG),
    Endpoint(
        "blinded_read",
        "post",
        "/api/v1/review-items/{item}/blinded-read/",
        "physician",
        201,
        REVIEW_WRONG,
        body=lambda: {"stage": "metastasis"},
    ),
    Endpoint(
        "review_sign",
        "post",
        "/api/v1/review-items/{item}/decisions/",
        "physician",
        201,
        REVIEW_WRONG,
        body=lambda: {"outcome": "confirmed", "password": "correct-horse-battery-9"},
    ),
    Endpoint("models_list", "get", "/api/v1/models/", "outsider", 200, [], missing_404=False),
    Endpoint("model_detail", "get", "/api/v1/models/{model}/", "clinician", 200, []),
    Endpoint(
        "models_register",
        "post",
        "/api/v1/models/",
        "admin_user",
        201,
        ADMIN_WRONG,
        body=lambda: {"bundle": "demo-pcam"},
        missing_404=False,
    ),
    Endpoint("model_activate", "post", "/api/v1/models/{model}/activate/", "admin_user", 200, ADMIN_WRONG),
    Endpoint("model_retire", "post", "/api/v1/models/{model}/retire/", "admin_user", 200, ADMIN_WRONG),
    Endpoint("audit_list", "get", "/api/v1/audit-events/", "admin_user", 200, ADMIN_WRONG, missing_404=False),
    Endpoint("audit_detail", "get", "/api/v1/audit-events/{event}/", "admin_user", 200, ADMIN_WRONG),
    Endpoint(
        "slide_upload_create",
        "post",
        "/api/v1/cases/{case}/slide-uploads/",
        "clinician",
        201,
        CLINICAL_WRONG,
        "other_clinician",
        extra={
            "HTTP_TUS_RESUMABLE": "1.0.0",
            "HTTP_UPLOAD_LENGTH": "1000",
            "HTTP_UPLOAD_METADATA": "filename " + base64.b64encode(b"slide.tiff").decode(),
        },
    ),
    Endpoint(
        "slide_upload", "get", "/api/v1/slide-uploads/{upload}/", "clinician", 200, CLINICAL_WRONG, "other_clinician"
    ),
    Endpoint(
        "slide_upload_finish",
        "post",
        "/api/v1/slide-uploads/{upload}/finish/",
        "clinician",
        409,  # the world's upload has no bytes yet: "upload_incomplete"
        CLINICAL_WRONG,
        "other_clinician",
        body=lambda: {"sha256": "0" * 64},
    ),
    # The world's review item is an image, not a slide: its own physician gets 404 here
    # (tests/slides_tests show a slide's map); the roles are what this row checks.
    Endpoint("slide_map", "get", "/api/v1/review-items/{item}/slide-map/", "physician", 404, REVIEW_WRONG),
    Endpoint("tokens_list", "get", "/api/v1/tokens/", "outsider", 200, [], missing_404=False),
    # STOW-RS answers the integration account's token only; a person's token is the wrong kind.
    Endpoint(
        "dicomweb_studies",
        "post",
        "/api/v1/dicomweb/studies",
        "integration",
        200,
        ["clinician", "physician", "admin_user", "outsider"],
        raw=_stow_body,
        missing_404=False,
        extra={"HTTP_ACCEPT": "application/json"},
    ),
    # A signed result's FHIR report: whoever may see the case (its clinician, its unit's
    # integration account); another unit's 404.
    Endpoint(
        "fhir_diagnostic_report",
        "get",
        "/api/v1/fhir/DiagnosticReport/{decision}",
        "clinician",
        200,
        [],
        "other_clinician",
        extra={"HTTP_ACCEPT": "application/json"},
    ),
    Endpoint("token_detail", "get", "/api/v1/tokens/{token}/", "clinician", 200, [], "other_clinician"),
    Endpoint("token_revoke", "delete", "/api/v1/tokens/{token}/", "clinician", 200, [], "other_clinician"),
]


@pytest.fixture
def world(clinician, other_clinician, physician, admin_user, outsider, active_model):  # type: ignore[no-untyped-def]
    case = make_case(clinician, ref="PSN-OWN")
    failed = make_case(clinician, ref="PSN-FAILED", seed=9).scans.get().job
    failed.status = "failed"
    failed.error = "inference failed: OSError"
    failed.save()
    prediction = make_prediction(clinician, active_model, [0.3, 0.7], ref="PSN-REVIEW", color=(5, 6, 7))
    token, _ = account_services.api_token_create(acting_user=clinician, user=clinician, name="kept")
    upload = slide_upload_create(acting_user=clinician, case=case, filename="slide.tiff", length=1000)
    signed = make_prediction(clinician, active_model, [0.2, 0.8], ref="PSN-SIGNED", color=(8, 9, 10))
    decision = review_sign(
        acting_user=physician, review_item=signed.review_item, outcome="confirmed", stage="", reason="",
        password=PASSWORD, signing_session=None,
    )  # fmt: skip
    _, integration_token = integration_account_create(
        acting_user=None, name="PACS", unit=case.unit, task=active_model.task
    )
    from accounts.models import AuditEvent

    return {
        "users": {
            "clinician": clinician,
            "other_clinician": other_clinician,
            "physician": physician,
            "admin_user": admin_user,
            "outsider": outsider,
        },
        "case": case.uuid,
        "scan": case.scans.get().uuid,
        "job": case.scans.get().job.uuid,
        "failed_job": failed.uuid,
        "item": prediction.review_item.uuid,
        "model": active_model.uuid,
        "event": AuditEvent.objects.first().uuid,  # type: ignore[union-attr]
        "token": token.uuid,
        "upload": upload.uuid,
        "decision": decision.uuid,
        "integration_token": integration_token,
    }


def _client(world: dict[str, Any], persona: str):  # type: ignore[no-untyped-def]
    if persona == "integration":
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {world['integration_token']}")
        return client
    return api(world["users"][persona])


def _call(client, ep: Endpoint, url: str):  # type: ignore[no-untyped-def]
    if ep.raw is not None:
        data, content_type = ep.raw()
        return client.generic(ep.method.upper(), url, data=data, content_type=content_type, **ep.extra)
    body = ep.body() if ep.body else None
    if ep.multipart:
        return getattr(client, ep.method)(url, body, format="multipart", **ep.extra)
    if body is not None:
        return getattr(client, ep.method)(url, body, format="json", **ep.extra)
    return getattr(client, ep.method)(url, **ep.extra)


def _url(ep: Endpoint, world: dict[str, Any]) -> str:
    return ep.url.format(**{k: v for k, v in world.items() if k not in ("users", "integration_token")})


def _assert_error(response, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


@pytest.mark.parametrize("ep", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_anonymous_gets_401(ep, world):
    response = _call(api(), ep, _url(ep, world))
    _assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Token")


@pytest.mark.parametrize("ep", [e for e in ENDPOINTS if e.wrong], ids=[e.name for e in ENDPOINTS if e.wrong])
def test_wrong_role_gets_403(ep, world):
    for persona in ep.wrong:
        response = _call(api(world["users"][persona]), ep, _url(ep, world))
        _assert_error(response, 403, "permission_denied")


@pytest.mark.parametrize("ep", [e for e in ENDPOINTS if e.foreign], ids=[e.name for e in ENDPOINTS if e.foreign])
def test_somebody_elses_object_is_404(ep, world):
    response = _call(api(world["users"][ep.foreign]), ep, _url(ep, world))
    _assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    "ep", [e for e in ENDPOINTS if e.missing_404], ids=[e.name for e in ENDPOINTS if e.missing_404]
)
def test_unknown_object_is_404(ep, world):
    missing = {k: (uuid.uuid4() if k not in ("users", "integration_token") else v) for k, v in world.items()}
    response = _call(_client(world, ep.own), ep, _url(ep, missing))
    _assert_error(response, 404, "not_found")


@pytest.mark.parametrize("ep", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_own_object_succeeds(ep, world):
    response = _call(_client(world, ep.own), ep, _url(ep, world))
    assert response.status_code == ep.status, response.content
    assert response["Content-Type"] == "application/json"


def test_browser_session_works_and_needs_csrf(world):
    from rest_framework.test import APIClient

    client = APIClient(enforce_csrf_checks=True)
    client.cookies = login(world["users"]["clinician"]).cookies
    assert client.get("/api/v1/cases/").status_code == 200
    response = client.post("/api/v1/cases/", {"patient_ref": "PSN-X", "body_site": "skin"}, format="json")
    _assert_error(response, 403, "permission_denied")
    assert "CSRF" in response.json()["error"]["message"]


def test_malformed_uuid_and_unknown_path_answer_json_404(world):
    client = api(world["users"]["clinician"])
    for url in ("/api/v1/cases/not-a-uuid/", "/api/v1/nothing-here/"):
        _assert_error(client.get(url), 404, "not_found")


def test_every_api_url_is_in_the_matrix():
    """Walks the URL configuration: a new endpoint fails here until ENDPOINTS has it."""
    import re
    import uuid

    from django.urls import reverse

    from tests.diagnostics_tests.test_permission_matrix import url_names

    uuid_re = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    documentation = {"api_schema", "api_docs", "api_redoc"}
    routes = set()
    for name, pattern in url_names().items():
        if name.startswith("api_") and name not in documentation:
            path = reverse(name, kwargs={key: uuid.uuid4() for key in pattern.pattern.converters})
            routes.add(uuid_re.sub("{}", path))
    covered = {re.sub(r"\{[^}]+\}", "{}", ep.url) for ep in ENDPOINTS}
    assert routes, "no API URL found"
    assert routes <= covered, f"endpoints without persona expectations: {sorted(routes - covered)}"
