"""What an integrating system notices: exact ids on every list, uploads with the
validator's codes, signing and correcting, retry, models, audit, tokens, throttles."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from accounts.models import ApiToken, AuditEvent
from diagnostics.models import InferenceJob, ModelVersion, ReviewDecision, Scan
from diagnostics.services import job_queue
from diagnostics.services.reviews import review_sign
from tests.factories import make_case, make_prediction
from tests.helpers import PASSWORD, api, ids, image_bytes, stored_files

pytestmark = pytest.mark.django_db


def _png(name: str, color: tuple[int, int, int] = (10, 20, 30)) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, image_bytes(color=color), content_type="image/png")


# --- lists show exactly the permitted objects ----------------------------------------


def test_case_scan_and_job_lists_show_exactly_own_objects(clinician, other_clinician):
    mine = [make_case(clinician, ref=f"PSN-M{i}", seed=i) for i in range(3)]
    theirs = make_case(other_clinician, ref="PSN-T", seed=7)
    client = api(clinician)
    assert ids(client.get("/api/v1/cases/")) == [str(c.uuid) for c in reversed(mine)]
    assert ids(api(other_clinician).get("/api/v1/cases/")) == [str(theirs.uuid)]
    my_jobs = InferenceJob.objects.filter(scan__case__in=mine).order_by("-created_at", "-id")
    assert ids(client.get("/api/v1/jobs/")) == [str(j.uuid) for j in my_jobs]
    assert ids(client.get(f"/api/v1/cases/{mine[0].uuid}/scans/")) == [str(s.uuid) for s in mine[0].scans.all()]


def test_lists_are_paginated_and_filterable(clinician):
    cases = [make_case(clinician, ref=f"PSN-P{i}", n_files=0) for i in range(5)]
    client = api(clinician)
    page = client.get("/api/v1/cases/?page_size=2").json()
    assert page["count"] == 5 and len(page["results"]) == 2 and page["next"]
    assert ids(client.get("/api/v1/cases/?patient_ref=PSN-P3")) == [str(cases[3].uuid)]
    bad = client.get("/api/v1/cases/?created_after=yesterday")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid"
    assert "created_after" in bad.json()["error"]["fields"]
    assert client.get("/api/v1/cases/?page=99").json()["error"]["code"] == "not_found"


def test_review_queue_lists_exactly_pending_items_in_queue_order(clinician, physician, active_model):
    low = make_prediction(clinician, active_model, [0.9, 0.1], ref="PSN-LOW", color=(1, 1, 1))
    high_unsure = make_prediction(clinician, active_model, [0.4, 0.6], ref="PSN-HU", color=(2, 2, 2))
    high_sure = make_prediction(clinician, active_model, [0.05, 0.95], ref="PSN-HS", color=(3, 3, 3))
    signed = make_prediction(clinician, active_model, [0.2, 0.8], ref="PSN-SIGNED", color=(4, 4, 4))
    review_sign(
        signing_session=None,
        acting_user=physician,
        review_item=signed.review_item,
        outcome="confirmed",
        stage="",
        reason="",
        password=PASSWORD,
    )
    expected = [high_unsure, high_sure, low]
    assert ids(api(physician).get("/api/v1/review-queue/")) == [str(p.review_item.uuid) for p in expected]
    filtered = api(physician).get("/api/v1/review-queue/?predicted_label=no-metastasis")
    assert ids(filtered) == [str(low.review_item.uuid)]


def test_audit_and_token_and_model_lists_show_exact_ids(clinician, other_clinician, admin_user, active_model):
    make_case(clinician, ref="PSN-A")
    admin = api(admin_user)
    events = AuditEvent.objects.order_by("-created_at", "-id")
    assert ids(admin.get("/api/v1/audit-events/?page_size=100")) == [str(e.uuid) for e in events]
    case_events = admin.get("/api/v1/audit-events/?action=case.create")
    assert ids(case_events) == [str(e.uuid) for e in events.filter(action="case.create")]
    api(other_clinician)  # the other clinician's token must not show up below
    client = api(clinician)
    mine = ApiToken.objects.filter(user=clinician).order_by("-created_at", "id")
    assert ids(client.get("/api/v1/tokens/")) == [str(t.uuid) for t in mine]
    assert ids(client.get("/api/v1/models/")) == [str(active_model.uuid)]


# --- uploads ---------------------------------------------------------------------------


def test_create_case_then_upload_many_and_repeat(clinician):
    client = api(clinician)
    created = client.post("/api/v1/cases/", {"patient_ref": "PSN-API", "body_site": "skin"}, format="json")
    assert created.status_code == 201
    case_id = created.json()["id"]
    files = [_png("a.png", (1, 1, 1)), _png("b.png", (2, 2, 2))]
    response = client.post(f"/api/v1/cases/{case_id}/scans/", {"files": files}, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    assert [s["original_name"] for s in body["created"]] == ["a.png", "b.png"]
    assert {s["status"] for s in body["created"]} == {"queued"}
    assert body["created"][0]["result"] is None
    again = client.post(f"/api/v1/cases/{case_id}/scans/", {"files": [_png("a.png", (1, 1, 1))]}, format="multipart")
    assert again.status_code == 200
    assert again.json()["created"] == []
    assert [s["id"] for s in again.json()["repeated"]] == [body["created"][0]["id"]]
    assert Scan.objects.filter(case__uuid=case_id).count() == 2


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("empty.png", b"", "empty_file"),
        ("notes.png", b"not an image at all", "unsupported_type"),
        ("broken.png", image_bytes()[:60], "corrupt_image"),
        ("photo.jpg", image_bytes("PNG"), "extension_mismatch"),
        ("huge.png", image_bytes(size=(300, 300)), "too_many_pixels"),
    ],
)
def test_upload_errors_carry_the_validator_code_and_file_name_and_store_nothing(clinician, settings, name, data, code):
    settings.UPLOAD_MAX_PIXELS = 250 * 250
    case = make_case(clinician, n_files=0)
    before = stored_files()
    files = [_png("good.png"), SimpleUploadedFile(name, data, content_type="image/png")]
    response = api(clinician).post(f"/api/v1/cases/{case.uuid}/scans/", {"files": files}, format="multipart")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "upload_rejected"
    assert error["fields"]["files"] == [{"code": code, "message": error["fields"]["files"][0]["message"], "file": name}]
    assert name in error["message"]
    assert case.scans.count() == 0
    assert stored_files() == before


def test_upload_too_large_and_missing_files(clinician, settings):
    settings.UPLOAD_MAX_BYTES = 100
    case = make_case(clinician, n_files=0)
    client = api(clinician)
    big = client.post(f"/api/v1/cases/{case.uuid}/scans/", {"files": [_png("big.png")]}, format="multipart")
    assert big.json()["error"]["fields"]["files"][0]["code"] == "file_too_large"
    none = client.post(f"/api/v1/cases/{case.uuid}/scans/", {}, format="multipart")
    assert none.status_code == 400
    assert none.json()["error"]["fields"]["files"][0]["code"] == "required"
    as_json = client.post(f"/api/v1/cases/{case.uuid}/scans/", {"files": []}, format="json")
    assert as_json.status_code == 415
    assert as_json.json()["error"]["code"] == "unsupported_media_type"


def test_case_create_validation_names_fields(clinician):
    response = api(clinician).post("/api/v1/cases/", {"patient_ref": "John Smith"}, format="json")
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert fields["patient_ref"][0]["code"] == "invalid_patient_ref"
    assert fields["body_site"][0]["code"] == "required"
    malformed = api(clinician).post("/api/v1/cases/", "{not json", content_type="application/json")
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "parse_error"


# --- review ------------------------------------------------------------------------------


def test_sign_then_correct_and_the_clinician_sees_the_signed_result(clinician, physician, active_model):
    prediction = make_prediction(clinician, active_model, [0.3, 0.7])
    item_url = f"/api/v1/review-items/{prediction.review_item.uuid}/"
    doctor = api(physician)
    detail = doctor.get(item_url).json()
    assert detail["prediction"]["predicted_label"] == "metastasis"
    assert detail["prediction"]["probabilities"] == [0.3, 0.7]
    assert detail["decisions"] == [] and detail["current_decision"] is None

    wrong = doctor.post(item_url + "decisions/", {"outcome": "confirmed", "password": "nope"}, format="json")
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "signature_failed"
    assert "password" in wrong.json()["error"]["fields"]
    assert not ReviewDecision.objects.exists()

    no_reason = doctor.post(
        item_url + "decisions/", {"outcome": "rejected", "stage": "no-metastasis", "password": PASSWORD}, format="json"
    )
    assert no_reason.status_code == 400
    assert "reason" in no_reason.json()["error"]["fields"]

    signed = doctor.post(item_url + "decisions/", {"outcome": "confirmed", "password": PASSWORD}, format="json")
    assert signed.status_code == 201
    first = signed.json()
    assert (first["stage"], first["meaning"], first["signer_name"]) == ("metastasis", "confirmed", "Peter Physician")

    again = doctor.post(item_url + "decisions/", {"outcome": "confirmed", "password": PASSWORD}, format="json")
    assert again.status_code == 400 and "outcome" in again.json()["error"]["fields"]

    corrected = doctor.post(
        item_url + "decisions/",
        {"supersedes": first["id"], "stage": "no-metastasis", "reason": "second look", "password": PASSWORD},
        format="json",
    )
    assert corrected.status_code == 201, corrected.content
    assert corrected.json()["meaning"] == "corrected" and corrected.json()["supersedes"] == first["id"]
    assert doctor.get(item_url).json()["current_decision"] == corrected.json()["id"]
    assert ids(doctor.get("/api/v1/review-queue/")) == []

    scan = api(clinician).get(f"/api/v1/scans/{prediction.scan.uuid}/").json()
    assert scan["status"] == "signed"
    assert scan["result"]["stage"] == "no-metastasis"
    assert scan["result"]["decision"] == corrected.json()["id"]
    assert "predicted_label" not in str(scan)  # the AI's answer is not a result


# --- jobs, models ------------------------------------------------------------------------


def test_retry_only_a_failed_job_and_it_is_queued_again_after_commit(
    clinician, django_capture_on_commit_callbacks, monkeypatch
):
    job = make_case(clinician).scans.get().job
    client = api(clinician)
    not_failed = client.post(f"/api/v1/jobs/{job.uuid}/retry/")
    assert not_failed.status_code == 400
    assert not_failed.json()["error"]["fields"]["status"][0]["code"] == "job_not_failed"
    job.status, job.error = "failed", "inference failed: OSError"
    job.save()
    sent: list[int] = []
    monkeypatch.setattr(job_queue, "job_send", sent.append)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/jobs/{job.uuid}/retry/")
    assert response.status_code == 200
    assert response.json()["status"] == "queued" and response.json()["error"] == ""
    assert sent == [job.id]
    assert AuditEvent.objects.filter(action="job.retry", object_id=str(job.uuid)).count() == 1


def test_admin_registers_activates_and_retires_models(admin_user, active_model):
    admin = api(admin_user)
    again = admin.post("/api/v1/models/", {"bundle": "demo-pcam"}, format="json")
    assert again.status_code == 201 and again.json()["id"] == str(active_model.uuid)
    for bundle in ("../cancerweb", "/etc", "no-such-bundle", "", "x" * 300):
        bad = admin.post("/api/v1/models/", {"bundle": bundle}, format="json")
        assert bad.status_code == 400, bundle
        assert "bundle" in bad.json()["error"]["fields"]
    retired = admin.post(f"/api/v1/models/{active_model.uuid}/retire/")
    assert retired.json()["status"] == "retired"
    assert not ModelVersion.objects.filter(status="active").exists()
    twice = admin.post(f"/api/v1/models/{active_model.uuid}/retire/")
    assert twice.status_code == 400
    assert admin.post(f"/api/v1/models/{active_model.uuid}/activate/").json()["status"] == "active"
    actions = list(AuditEvent.objects.filter(object_id=str(active_model.uuid)).values_list("action", flat=True))
    assert actions[-2:] == ["model.retire", "model.activate"]


# --- tokens and throttles ----------------------------------------------------------------


def test_expired_and_revoked_tokens_answer_401_with_their_code(clinician):
    from accounts import services as account_services

    token, key = account_services.api_token_create(acting_user=clinician, user=clinician, name="lab")
    client = api()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert client.get("/api/v1/cases/").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(
        created_at=timezone.now() - timedelta(days=2), expires_at=timezone.now() - timedelta(seconds=1)
    )
    expired = client.get("/api/v1/cases/")
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "token_expired"
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() + timedelta(days=1))
    assert client.delete(f"/api/v1/tokens/{token.uuid}/").json()["revoked"] is True
    revoked = client.get("/api/v1/cases/")
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "token_revoked"
    client.credentials(HTTP_AUTHORIZATION="Token cw_made-up")
    assert client.get("/api/v1/cases/").json()["error"]["code"] == "invalid_token"
    assert ApiToken.objects.get(pk=token.pk).key_hash != key  # only the hash is stored


def test_tokens_are_made_in_a_browser_session_not_with_a_token(clinician, admin_user):
    from tests.helpers import login

    session = login(clinician)
    made = session.post(
        "/api/v1/tokens/", {"name": "lab system", "expires_in_days": 7}, content_type="application/json"
    )
    assert made.status_code == 201
    key = made.json()["key"]
    assert key.startswith("cw_")
    client = api()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/api/v1/cases/").status_code == 200
    minted = client.post("/api/v1/tokens/", {"name": "copy"}, format="json")
    assert minted.status_code == 403 and minted.json()["error"]["code"] == "session_required"
    too_long = session.post("/api/v1/tokens/", {"name": "x", "expires_in_days": 10000}, content_type="application/json")
    assert too_long.status_code == 400 and "expires_in_days" in too_long.json()["error"]["fields"]
    for_other = session.post(
        "/api/v1/tokens/", {"name": "x", "user": str(admin_user.uuid)}, content_type="application/json"
    )
    assert for_other.status_code == 403
    # Not even an admin mints a token for somebody else: its reads would be audited under
    # the physician's or clinician's name although they never made it.
    before = ApiToken.objects.filter(user=clinician).count()
    by_admin = login(admin_user).post(
        "/api/v1/tokens/", {"name": "for clara", "user": str(clinician.uuid)}, content_type="application/json"
    )
    assert by_admin.status_code == 403 and by_admin.json()["error"]["code"] == "permission_denied"
    assert ApiToken.objects.filter(user=clinician).count() == before
    own = login(admin_user).post(
        "/api/v1/tokens/", {"name": "mine", "user": str(admin_user.uuid)}, content_type="application/json"
    )
    assert own.status_code == 201 and own.json()["username"] == "admin"


def test_throttled_per_token_and_per_user(clinician, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"anon": "100/minute", "user": "5/minute", "token": "3/minute"},
    }
    first, second = api(clinician), api(clinician)
    assert [first.get("/api/v1/cases/").status_code for _ in range(3)] == [200, 200, 200]
    limited = first.get("/api/v1/cases/")
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "throttled"
    assert int(limited["Retry-After"]) > 0
    # Another token of the same user has its own token budget but shares the user's,
    # which has counted all four requests so far: one more is allowed.
    assert [second.get("/api/v1/cases/").status_code for _ in range(2)] == [200, 429]


def test_too_many_files_in_one_request_is_a_json_400_and_stores_nothing(clinician, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    case = make_case(clinician, n_files=0)
    files = [_png(f"{i}.png", (i, i, i)) for i in range(3)]
    response = api(clinician).post(f"/api/v1/cases/{case.uuid}/scans/", {"files": files}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_files"
    assert response.json()["error"]["fields"]["files"][0]["message"] == "at most 2 files per upload"
    assert case.scans.count() == 0
