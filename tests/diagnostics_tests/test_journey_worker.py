"""The whole journey through Django's test client with a real Celery worker process,
real Redis and PostgreSQL: upload, inference in the worker, review, signed result."""

from __future__ import annotations

import re
import time

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from diagnostics.models import InferenceJob, Prediction
from diagnostics.services.model_registry import model_register
from tests.helpers import PASSWORD, login, otp_code, sample_bytes

pytestmark = [pytest.mark.worker, pytest.mark.storage]


def test_upload_infer_review_sign_journey(celery_worker_process, clinician, physician):
    model_register(acting_user=None, bundle_dir=settings.MODEL_DIR / "demo-pcam", activate=True)

    # Clinician creates a case with two real patches.
    c = login(clinician)
    files = [
        SimpleUploadedFile("met.jpg", sample_bytes("pcam-metastasis-1.jpg")),
        SimpleUploadedFile("neg.jpg", sample_bytes("pcam-no-metastasis-1.jpg")),
    ]
    response = c.post(
        reverse("case_new"), {"patient_ref": "PSN-E2E", "body_site": "sentinel node", "note": "", "files": files}
    )
    assert response.status_code == 302, response.content.decode()[-2000:]
    case_url = response["Location"]
    case_uuid = case_url.strip("/").split("/")[-1]
    status_url = reverse("case_status", args=[case_uuid])
    # The worker may already be done by the first look; the page shows one of the steps.
    first_look = c.get(case_url).content.decode()
    assert any(f"status-{code}" in first_look for code in ("queued", "running", "awaiting_review"))

    # The page polls this fragment; the worker moves both scans to "awaiting review".
    deadline = time.monotonic() + 180
    while True:
        fragment = c.get(status_url).content.decode()
        if fragment.count("status-awaiting_review") == 2:
            break
        assert "status-failed" not in fragment, fragment
        assert time.monotonic() < deadline, f"worker did not finish: {fragment}"
        time.sleep(0.5)
    assert "Case status: <strong" in fragment and "Awaiting review" in fragment
    jobs = list(InferenceJob.objects.all())
    assert [j.status for j in jobs] == ["succeeded", "succeeded"]
    assert all(j.attempts == 1 for j in jobs)

    # Physician finds the items in the queue and rejects one with a stage and reason.
    p = login(physician)
    queue = p.get(reverse("review_queue")).content.decode()
    links = re.findall(r'href="(/review/[0-9a-f-]{36}/)"', queue)
    assert len(links) == 2
    item_page = p.get(links[0]).content.decode()
    assert "AI suggestion" in item_page
    prediction = Prediction.objects.get(review_item__uuid=links[0].split("/")[2])
    other_stage = next(label for label in prediction.labels if label != prediction.predicted_label)
    assert prediction.predicted_label in item_page
    signed = p.post(
        links[0],
        {
            "outcome": "rejected",
            "stage": other_stage,
            "reason": "morphology disagrees",
            "password": PASSWORD,
            "otp_token": otp_code(physician),
        },
    )
    assert signed.status_code == 302

    # Clinician sees the physician's signed stage, name and time.
    page = c.get(case_url).content.decode()
    assert other_stage in page
    assert "signed by Peter Physician" in page
    assert "Awaiting review" in page  # the second image still waits
