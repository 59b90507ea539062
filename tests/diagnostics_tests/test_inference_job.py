"""The inference service in-process: claim, predict with the bundled model, store once."""

from __future__ import annotations

import pytest

from diagnostics.models import InferenceJob, Prediction, ReviewItem
from diagnostics.services.jobs import JobOutcome, job_run, predictions_store
from tests.factories import make_scan

pytestmark = [pytest.mark.django_db, pytest.mark.storage]


def test_job_runs_twice_acts_once(clinician, active_model):
    scan = make_scan(clinician)
    job_run(job_id=scan.job.id)
    job_run(job_id=scan.job.id)  # a duplicate delivery
    job = InferenceJob.objects.get(pk=scan.job.pk)
    assert job.status == InferenceJob.Status.SUCCEEDED
    assert job.attempts == 1
    assert Prediction.objects.filter(scan=scan).count() == 1
    assert ReviewItem.objects.filter(prediction__scan=scan).count() == 1


def test_prediction_records_labels_probabilities_version_hash_and_time(clinician, active_model):
    scan = make_scan(clinician)
    job_run(job_id=scan.job.id)
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
    job_run(job_id=scan.job.id)
    InferenceJob.objects.filter(pk=scan.job.pk).update(status="running")  # as if redelivered mid-flight
    again = predictions_store(
        model_version=active_model,
        outcomes=[JobOutcome(job_id=scan.job.id, probabilities=[0.5, 0.5])],
        inference_ms=1.0,
    )
    assert again == []
    assert Prediction.objects.filter(scan=scan).count() == 1


def test_without_an_active_model_the_job_fails_with_a_stated_reason(clinician):
    scan = make_scan(clinician)
    job_run(job_id=scan.job.id)
    job = InferenceJob.objects.get(pk=scan.job.pk)
    assert job.status == InferenceJob.Status.FAILED
    assert job.error == "no active model is registered"
    assert not Prediction.objects.exists()


def test_tampered_stored_bytes_fail_the_job(clinician, active_model):
    from diagnostics.intake import storage

    scan = make_scan(clinician)
    storage.write_raw(scan.storage_name, storage.read_raw(scan.storage_name) + b"tamper")
    job_run(job_id=scan.job.id)
    job = InferenceJob.objects.get(pk=scan.job.pk)
    assert job.status == InferenceJob.Status.FAILED
    # Stored bytes are encrypted (AES-GCM): any change fails authentication first.
    assert "stored scan bytes failed decryption" in job.error


def test_one_job_takes_waiting_jobs_into_its_batch_and_their_messages_become_no_ops(clinician, active_model, settings):
    settings.INFERENCE_BATCH_SIZE = 8
    scans = [make_scan(clinician, ref=f"PSN-B{i}", color=(i * 40, 90, 30)) for i in range(3)]
    job_run(job_id=scans[0].job.id)
    for scan in scans:  # each job's own message arrives later
        job_run(job_id=scan.job.id)
    jobs = InferenceJob.objects.filter(scan__in=scans)
    assert {j.status for j in jobs} == {InferenceJob.Status.SUCCEEDED}
    assert [j.attempts for j in jobs] == [1, 1, 1]
    assert Prediction.objects.filter(scan__in=scans).count() == 3
    assert ReviewItem.objects.filter(prediction__scan__in=scans).count() == 3


def test_a_bad_job_in_a_batch_fails_alone(clinician, active_model, settings):
    from diagnostics.intake import storage

    settings.INFERENCE_BATCH_SIZE = 8
    good = make_scan(clinician, ref="PSN-G", color=(10, 90, 30))
    bad = make_scan(clinician, ref="PSN-X", color=(99, 9, 30))
    storage.write_raw(bad.storage_name, storage.read_raw(bad.storage_name) + b"tamper")
    job_run(job_id=good.job.id)
    assert InferenceJob.objects.get(pk=good.job.pk).status == InferenceJob.Status.SUCCEEDED
    assert InferenceJob.objects.get(pk=bad.job.pk).status == InferenceJob.Status.FAILED


def test_batch_size_one_takes_only_its_own_job(clinician, active_model, settings):
    settings.INFERENCE_BATCH_SIZE = 1
    first = make_scan(clinician, ref="PSN-1A", color=(1, 90, 30))
    second = make_scan(clinician, ref="PSN-1B", color=(2, 90, 30))
    job_run(job_id=first.job.id)
    assert InferenceJob.objects.get(pk=first.job.pk).status == InferenceJob.Status.SUCCEEDED
    assert InferenceJob.objects.get(pk=second.job.pk).status == InferenceJob.Status.QUEUED


def test_a_job_claimed_before_runs_alone_and_is_not_batched(clinician, active_model, settings):
    """After a crash, jobs run one by one: a poison image cannot burn its batch mates' attempts."""
    settings.INFERENCE_BATCH_SIZE = 8
    crashed = make_scan(clinician, ref="PSN-C1", color=(5, 90, 30))
    fresh = make_scan(clinician, ref="PSN-C2", color=(6, 90, 30))
    InferenceJob.objects.filter(pk=crashed.job.pk).update(attempts=1)  # claimed once by a worker that died
    job_run(job_id=crashed.job.id)
    assert InferenceJob.objects.get(pk=crashed.job.pk).status == InferenceJob.Status.SUCCEEDED
    assert InferenceJob.objects.get(pk=fresh.job.pk).status == InferenceJob.Status.QUEUED
    job_run(job_id=fresh.job.id)
    assert InferenceJob.objects.get(pk=fresh.job.pk).status == InferenceJob.Status.SUCCEEDED


def test_waiting_mates_are_claimed_in_one_statement_and_slides_are_left_alone(clinician, active_model, settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from diagnostics.models import Scan

    settings.INFERENCE_BATCH_SIZE = 8
    settings.INFERENCE_MAX_DELAY_MS = 0
    scans = [make_scan(clinician, ref=f"PSN-O{i}", color=(i * 30, 70, 30)) for i in range(4)]
    slide = make_scan(clinician, ref="PSN-SL", color=(250, 1, 1))
    # A slide job keeps its own path (services/slides.py).
    Scan.objects.filter(pk=slide.pk).update(kind=Scan.Kind.SLIDE, chunk_bytes=1024, mpp_x=0.25, mpp_y=0.25)
    with CaptureQueriesContext(connection) as ctx:
        job_run(job_id=scans[0].job.id)
    claims = [q["sql"] for q in ctx.captured_queries if "FOR UPDATE OF j SKIP LOCKED" in q["sql"]]
    # One statement took the three mates, one more found nothing left to take.
    assert len(claims) == 2, claims
    assert {j.status for j in InferenceJob.objects.filter(scan__in=scans)} == {InferenceJob.Status.SUCCEEDED}
    # ...and the four ran as one batch: one time per image for all of them.
    assert len(set(Prediction.objects.filter(scan__in=scans).values_list("inference_ms", flat=True))) == 1
    assert InferenceJob.objects.get(scan=slide).status == InferenceJob.Status.QUEUED
    assert InferenceJob.objects.get(scan=slide).attempts == 0


@pytest.mark.django_db(transaction=True)
def test_one_task_drains_the_queue_batch_after_batch_with_a_valid_audit_chain(clinician, active_model, settings):
    """The next batch is claimed and decoded in a helper thread (its own database
    connection, so this test commits) while the network runs the current one."""
    from accounts.audit import verify_chain
    from accounts.models import AuditEvent

    settings.INFERENCE_BATCH_SIZE = 2
    settings.INFERENCE_MAX_DELAY_MS = 0
    scans = [make_scan(clinician, ref=f"PSN-D{i}", color=(i * 40, 20, 90)) for i in range(5)]
    job_run(job_id=scans[0].job.id)
    jobs = list(InferenceJob.objects.filter(scan__in=scans).order_by("id"))
    assert [j.status for j in jobs] == [InferenceJob.Status.SUCCEEDED] * 5
    assert [j.attempts for j in jobs] == [1] * 5 and len({j.claimed_by for j in jobs}) == 1
    assert Prediction.objects.filter(scan__in=scans).count() == 5
    assert AuditEvent.objects.filter(action="prediction.create").count() == 5
    # Three batches (2 + 2 + 1), stored one transaction each: the batch's predictions share
    # one time per image, so three distinct values.
    assert len(set(Prediction.objects.filter(scan__in=scans).values_list("inference_ms", flat=True))) == 3
    assert verify_chain().ok
    for scan in scans:  # the jobs' own messages arrive later: no-ops
        job_run(job_id=scan.job.id)
    assert Prediction.objects.filter(scan__in=scans).count() == 5


def test_a_task_out_of_time_leaves_its_jobs_running_for_the_sweeper(clinician):
    from celery.exceptions import SoftTimeLimitExceeded

    from diagnostics.services.job_queue import job_fail

    job = make_scan(clinician, ref="PSN-T1").job
    InferenceJob.objects.filter(pk=job.pk).update(status=InferenceJob.Status.RUNNING, attempts=1)
    job.refresh_from_db()
    with pytest.raises(SoftTimeLimitExceeded):
        job_fail(job, SoftTimeLimitExceeded())
    job.refresh_from_db()
    assert job.status == InferenceJob.Status.RUNNING and job.error == ""
