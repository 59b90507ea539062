"""A candidate model version proven in shadow, through a real Celery worker: it
predicts on new uploads beside the active version, and on past signed cases on demand;
what it says is stored apart and appears on no page or API answer a physician or
clinician reaches; the admins' comparison page (opened in Chromium, screenshotted)
shows it against the active version on the same cases; activating it records that
comparison in the audit event."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from PIL import Image, ImageOps

from accounts.models import AuditEvent
from diagnostics.models import ModelVersion, Prediction, ShadowPrediction
from diagnostics.services.model_registry import model_register
from tests.browser_tests.conftest import shot
from tests.browser_tests.journeys import login as browser_login
from tests.factories import ReviewDecisionFactory, UserFactory
from tests.helpers import PASSWORD, SAMPLES, api, login
from tests.models_tests.candidate_bundle import NAME, VERSION, make_candidate_bundle

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]
TASK = "Lymph-node metastasis in H&E patches"
REPO_DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-pcam"


def _images() -> list[tuple[str, bytes, str]]:
    """The four real patches and their mirror images: (file name, PNG, true stage)."""
    out = []
    for path in sorted(SAMPLES.glob("pcam-*.jpg")):
        stage = "no-metastasis" if "no-metastasis" in path.name else "metastasis"
        for flip in (False, True):
            img = Image.open(path).convert("RGB")
            buffer = io.BytesIO()
            (ImageOps.mirror(img) if flip else img).save(buffer, format="PNG")
            out.append((f"{path.stem}{'-m' if flip else ''}.png", buffer.getvalue(), stage))
    return out


def _upload(client, images):  # type: ignore[no-untyped-def]
    """One case per image through the API; returns {scan uuid: true stage}."""
    truth = {}
    for name, data, stage in images:
        body = {"patient_ref": f"PSN-SH-{name[:20].upper()}", "body_site": "lymph node", "task": TASK}
        case = client.post("/api/v1/cases/", body, format="json")
        assert case.status_code == 201, case.content
        up = client.post(
            f"/api/v1/cases/{case.json()['id']}/scans/", {"files": [SimpleUploadedFile(name, data)]}, format="multipart"
        )
        assert up.status_code == 201, up.content
        truth[up.json()["created"][0]["id"]] = stage
    return truth


def _wait(what, done, seconds=120):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


def _sign_all(truth, signer):  # type: ignore[no-untyped-def]
    for prediction in Prediction.objects.filter(scan__uuid__in=truth, review_item__status="pending"):
        stage = truth[str(prediction.scan.uuid)]
        # A flagged input (outside the training data) has no suggestion to confirm.
        confirmed = stage == prediction.predicted_label and not prediction.out_of_distribution
        ReviewDecisionFactory(
            review_item=prediction.review_item,
            outcome="confirmed" if confirmed else "rejected",
            stage=stage,
            reason="" if confirmed else "morphology disagrees",
            physician=signer,
        )


@pytest.fixture
def model_dir(settings, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """The active demo bundle and a candidate in a model folder the worker shares (set
    before the worker starts: the local folder is where it finds bundles when no object
    store is configured)."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copytree(REPO_DEMO, folder / "demo-pcam")
    make_candidate_bundle(folder / "pcam-candidate", bias_shift=1.5, kernel_noise=1.0)
    monkeypatch.setenv("CANCERWEB_MODEL_DIR", str(folder))
    settings.MODEL_DIR = folder
    return folder


def test_candidate_in_shadow_is_compared_and_never_shown(  # type: ignore[no-untyped-def]
    model_dir, live_server, browser, celery_worker_process, care_unit, clinician, physician, admin_user
):
    active = model_register(acting_user=None, bundle_dir="demo-pcam", activate=True)
    signer = UserFactory(username="signer", role="physician", units=[care_unit])
    images = _images()
    uploader = api(clinician)

    # Cases signed before the candidate exists: the on-demand run covers them.
    before = _upload(uploader, images[:4])
    _wait("the first predictions", lambda: Prediction.objects.count() == 4)
    _sign_all(before, signer)

    call_command("register_model", "pcam-candidate", "--candidate")
    candidate = ModelVersion.objects.get(name=NAME, version=VERSION)
    assert candidate.status == ModelVersion.Status.CANDIDATE
    after = _upload(uploader, images[4:])
    _wait("live shadow predictions", lambda: ShadowPrediction.objects.filter(source="live").count() == 4)
    live = ShadowPrediction.objects.filter(source="live")
    assert {str(s.scan.uuid) for s in live} == set(after)
    assert Prediction.objects.filter(model_version=active).count() == 8  # the clinical path is unchanged
    assert Prediction.objects.filter(model_version=candidate).count() == 0

    # The admin runs it on the last signed cases (an admin action, sent to the worker).
    admin = login(admin_user)
    response = admin.post(
        reverse("admin:diagnostics_modelversion_changelist"),
        {"action": "shadow_backfill_selected", "_selected_action": [candidate.pk]},
    )
    assert response.status_code == 302
    _wait("the backfill", lambda: ShadowPrediction.objects.filter(source="backfill").count() == 4)
    assert {str(s.scan.uuid) for s in ShadowPrediction.objects.filter(source="backfill")} == set(before)
    _sign_all(after, signer)

    # Nothing of the candidate reaches a physician or a clinician, on any page or API answer.
    shadows = list(ShadowPrediction.objects.all())
    secrets = [str(candidate.uuid), NAME, VERSION] + [str(s.uuid) for s in shadows]
    secrets += [json.dumps(s.probabilities[1]) for s in shadows]  # the candidate's own numbers
    seen = []
    for user, pages in (
        (physician, ["review_queue", "dashboard", "notification_list"]),
        (clinician, ["case_list", "notification_list"]),
    ):
        c, a = login(user), api(user)
        seen += [c.get(reverse(name)).content.decode() for name in pages]
        seen += [json.dumps(a.get(path).json()) for path in ("/api/v1/models/", "/api/v1/jobs/", "/api/v1/cases/")]
        assert a.get(f"/api/v1/models/{candidate.uuid}/").status_code == 404
        assert c.get(reverse("model_card", args=[candidate.uuid])).status_code == 404
        for prediction in Prediction.objects.select_related("review_item", "scan__case"):
            seen.append(c.get(reverse("case_detail", args=[prediction.scan.case.uuid])).content.decode())
            seen.append(json.dumps(a.get(f"/api/v1/scans/{prediction.scan.uuid}/").json()))
            seen.append(json.dumps(a.get(f"/api/v1/cases/{prediction.scan.case.uuid}/").json()))
            if user == physician:
                seen.append(c.get(reverse("review_detail", args=[prediction.review_item.uuid])).content.decode())
                seen.append(json.dumps(a.get(f"/api/v1/review-items/{prediction.review_item.uuid}/").json()))
                seen.append(json.dumps(a.get("/api/v1/review-queue/").json()))
    assert len(seen) > 40
    leaks = [s for s in secrets for text in seen if s in text]
    assert not leaks, leaks
    # ... while the physician does see the active version's answers.
    assert any(str(active) in text or active.name in text for text in seen)

    # The comparison page, in the browser, as the admin.
    # CSP bypassed only so the test can inject axe-core; the page itself sets none of it aside.
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    browser_login(page, live_server.url, "admin", PASSWORD)
    page.goto(f"{live_server.url}{reverse('admin:diagnostics_modelversion_shadow', args=[candidate.pk])}")
    assert "8 signed cases compared" in page.inner_text("#shadow-n")
    summary = page.inner_text("#shadow-summary")
    assert "McNemar exact p =" in summary and "paired bootstrap p =" in summary
    recall = page.inner_text("#shadow-recall")
    assert "no-metastasis" in recall and "metastasis" in recall
    # How often each would have withheld its answer, counted from the rows (both 0 or more).
    flagged_active = sum(p.out_of_distribution for p in Prediction.objects.filter(model_version=active))
    flagged_candidate = sum(s.out_of_distribution for s in ShadowPrediction.objects.filter(model_version=candidate))
    withheld = page.locator("#shadow-withheld td")
    assert [withheld.nth(0).inner_text(), withheld.nth(1).inner_text()] == [str(flagged_active), str(flagged_candidate)]
    # A screenshot without the axe-core check: the Django admin's own breadcrumbs fail
    # its link-in-text-block rule, on every admin page, not this page's content.
    shot(page, "shadow-comparison")
    print("SHADOW PAGE\n" + page.inner_text("#content"))
    context.close()

    # Activation records the comparison it was made on.
    response = admin.post(
        reverse("admin:diagnostics_modelversion_changelist"),
        {"action": "activate_selected", "_selected_action": [candidate.pk]},
    )
    assert response.status_code == 302
    event = AuditEvent.objects.filter(action="model.activate", object_id=str(candidate.uuid)).get()
    assert event.data["was_candidate"] is True
    assert event.data["shadow_comparison"]["n"] == 8
    assert 0.0 <= event.data["shadow_comparison"]["mcnemar_p"] <= 1.0
