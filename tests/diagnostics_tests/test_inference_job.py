"""The inference service in-process: claim, predict with the bundled model, store once."""

from __future__ import annotations

import pytest

from diagnostics import services
from diagnostics.models import InferenceJob, Prediction, ReviewItem
from tests.diagnostics_tests.helpers import make_scan

pytestmark = pytest.mark.django_db


def test_job_runs_twice_acts_once(clinician, active_model):
    scan = make_scan(clinician)
    services.job_run(job_id=scan.job.id)
    services.job_run(job_id=scan.job.id)  # a duplicate delivery
    job = InferenceJob.objects.get(pk=scan.job.pk)
    assert job.status == InferenceJob.Status.SUCCEEDED
    assert job.attempts == 1
    assert Prediction.objects.filter(scan=scan).count() == 1
    assert ReviewItem.objects.filter(prediction__scan=scan).count() == 1


def test_prediction_records_labels_probabilities_version_hash_and_time(clinician, active_model):
    scan = make_scan(clinician)
    services.job_run(job_id=scan.job.id)
    pred = Prediction.objects.get(scan=scan)
    assert pred.labels == active_model.labels == ["no-metastasis", "metastasis"]
    assert len(pred.probabilities) == 2
    assert abs(sum(pred.probabilities) - 1.0) < 1e-5
    assert pred.predicted_label == pred.labels[pred.probabilities.index(max(pred.probabilities))]
    assert pred.model_version == active_model
    assert pred.input_sha256 == scan.sha256
    assert pred.inference_ms > 0
    assert pred.review_item.status == ReviewItem.Status.PENDING


def test_a_second_store_for_the_same_job_is_a_quiet_no_op(clinician, active_model):
    scan = make_scan(clinician)
    services.job_run(job_id=scan.job.id)
    InferenceJob.objects.filter(pk=scan.job.pk).update(status="running")  # as if redelivered mid-flight
    again = services.prediction_store(
        job_id=scan.job.id, model_version=active_model, probabilities=[0.5, 0.5], inference_ms=1.0
    )
    assert again is None
    assert Prediction.objects.filter(scan=scan).count() == 1


def test_without_an_active_model_the_job_fails_with_a_stated_reason(clinician):
    scan = make_scan(clinician)
    services.job_run(job_id=scan.job.id)
    job = InferenceJob.objects.get(pk=scan.job.pk)
    assert job.status == InferenceJob.Status.FAILED
    assert job.error == "no active model is registered"
    assert not Prediction.objects.exists()


def test_tampered_stored_bytes_fail_the_job(clinician, active_model):
    from diagnostics.storage import scan_storage

    scan = make_scan(clinician)
    path = scan_storage().path(scan.storage_name)
    with open(path, "ab") as fh:
        fh.write(b"tamper")
    services.job_run(job_id=scan.job.id)
    job = InferenceJob.objects.get(pk=scan.job.pk)
    assert job.status == InferenceJob.Status.FAILED
    # Stored bytes are encrypted (AES-GCM): any change fails authentication first.
    assert "stored scan bytes failed decryption" in job.error
