"""A real Celery worker process with the hostile corpus thrown at the upload form
first: nothing reaches the worker, it stays up, and it then predicts on an encrypted,
de-identified DICOM upload."""

from __future__ import annotations

import time

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from diagnostics.models import InferenceJob, Prediction, Scan
from diagnostics.services.model_registry import model_register
from tests.diagnostics_tests.dicom_factory import dicom_bytes
from tests.diagnostics_tests.hostile_corpus import build_corpus
from tests.helpers import login

pytestmark = [pytest.mark.worker]


def test_worker_survives_the_corpus_and_predicts_on_dicom(celery_worker_process, clinician):
    model_register(acting_user=None, bundle_dir=settings.MODEL_DIR / "demo-pcam", activate=True)
    client = login(clinician)
    for _label, name, data in build_corpus(max_bytes=settings.UPLOAD_MAX_BYTES):
        response = client.post(
            reverse("case_new"),
            {"patient_ref": "PSN-X", "body_site": "chest", "files": [SimpleUploadedFile(name, data)]},
        )
        assert response.status_code == 400
    assert not InferenceJob.objects.exists()

    response = client.post(
        reverse("case_new"),
        {"patient_ref": "PSN-DCM", "body_site": "chest", "files": [SimpleUploadedFile("IM0001", dicom_bytes())]},
    )
    assert response.status_code == 302, response.content.decode()[-2000:]
    job = Scan.objects.get().job
    deadline = time.monotonic() + 180
    while InferenceJob.objects.get(pk=job.pk).status in ("queued", "running"):
        assert celery_worker_process.poll() is None, "the worker process died"
        assert time.monotonic() < deadline, "the worker did not finish the DICOM job"
        time.sleep(0.5)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.attempts == 1
    assert Prediction.objects.get(scan=job.scan).input_sha256 == job.scan.sha256
    assert celery_worker_process.poll() is None
