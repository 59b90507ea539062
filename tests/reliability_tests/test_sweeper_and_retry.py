"""The job row is the truth: the sweeper re-sends, requeues and fails jobs by their
deadlines; a failed job can be retried by its clinician without deleting anything."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent
from diagnostics.models import InferenceJob, Prediction, ReviewItem
from diagnostics.services.cases import IncomingFile, case_create
from diagnostics.services.jobs import JobOutcome, job_retry, job_run, job_sweep, predictions_store
from diagnostics.services.model_registry import model_register
from tests.factories import make_scan
from tests.helpers import celery_broker, free_port, image_bytes, login, stored_files

pytestmark = pytest.mark.django_db


@pytest.fixture
def deadlines(settings):  # type: ignore[no-untyped-def]
    settings.JOB_QUEUED_DEADLINE_S = 60
    settings.JOB_RUNNING_DEADLINE_S = 400
    settings.JOB_MAX_ATTEMPTS = 2
    return settings


def _age(job: InferenceJob, *, seconds: int) -> None:
    past = timezone.now() - timedelta(seconds=seconds)
    InferenceJob.objects.filter(pk=job.pk).update(updated_at=past, started_at=past)


def _claim(job: InferenceJob) -> None:
    """What a worker's claim does, without running the network."""
    InferenceJob.objects.filter(pk=job.pk).update(status="running", attempts=job.attempts + 1)
    job.refresh_from_db()


def test_a_job_running_past_its_deadline_is_requeued_sent_again_and_then_succeeds(
    clinician, active_model, deadlines, django_capture_on_commit_callbacks
):
    job = make_scan(clinician).job
    _claim(job)
    _age(job, seconds=300)
    assert job_sweep().requeued == []  # a slow worker under the deadline keeps its job

    _age(job, seconds=401)
    with django_capture_on_commit_callbacks() as callbacks:
        result = job_sweep()
    assert result.requeued == [job.id]
    assert len(callbacks) == 1  # one message sent again, after commit
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("queued", 1)
    assert AuditEvent.objects.filter(action="job.requeue", object_id=str(job.uuid)).count() == 1

    job_run(job_id=job.id)
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert Prediction.objects.filter(job=job).count() == 1


def test_after_the_last_attempt_the_sweeper_fails_the_job_with_a_stated_reason(clinician, deadlines):
    job = make_scan(clinician).job
    _claim(job)
    _claim(job)  # attempts == JOB_MAX_ATTEMPTS
    _age(job, seconds=401)
    assert job_sweep().failed == [job.id]
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == "gave up after 2 attempt(s): none finished within 400 s (worker lost or too slow)"
    assert AuditEvent.objects.filter(action="job.fail", object_id=str(job.uuid)).count() == 1


def test_a_job_queued_past_its_deadline_is_sent_again_once_per_deadline(
    clinician, deadlines, django_capture_on_commit_callbacks
):
    job = make_scan(clinician).job
    assert job_sweep().resent == []  # fresh: its message is presumably on its way
    _age(job, seconds=61)
    with django_capture_on_commit_callbacks() as callbacks:
        assert job_sweep().resent == [job.id]
    assert len(callbacks) == 1
    assert job_sweep().resent == []  # touched: not again until the next deadline
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("queued", 0)


def test_the_sweep_command_runs_once(clinician, deadlines, capsys):
    job = make_scan(clinician).job
    _age(job, seconds=61)
    call_command("sweep_jobs")
    assert "re-sent 1, requeued 0, failed 0" in capsys.readouterr().out


def _failed_job(user) -> InferenceJob:  # type: ignore[no-untyped-def]
    job = make_scan(user).job
    job_run(job_id=job.id)  # no active model: fails with a stated reason
    job.refresh_from_db()
    assert job.status == "failed"
    return job


def test_job_retry_puts_a_failed_job_back_in_the_queue_audited_and_sent_on_commit(
    clinician, django_capture_on_commit_callbacks
):
    job = _failed_job(clinician)
    with django_capture_on_commit_callbacks() as callbacks:
        retried = job_retry(acting_user=clinician, job=job, client_address="10.1.2.3")
    assert len(callbacks) == 1
    assert (retried.status, retried.attempts, retried.error) == ("queued", 0, "")
    event = AuditEvent.objects.get(action="job.retry", object_id=str(job.uuid))
    assert event.actor == clinician
    assert event.data["previous"] == {"attempts": 1, "error": "no active model is registered"}
    assert InferenceJob.objects.filter(pk=job.pk).exists()  # nothing deleted


def test_job_retry_refuses_a_job_that_is_not_failed_and_other_users(clinician, other_clinician, physician):
    job = make_scan(clinician).job
    with pytest.raises(ValidationError, match="only a failed analysis can be retried; this one is queued"):
        job_retry(acting_user=clinician, job=job)
    failed = _failed_job(other_clinician)
    with pytest.raises(PermissionDenied):
        job_retry(acting_user=clinician, job=failed)
    with pytest.raises(PermissionDenied):
        job_retry(acting_user=physician, job=failed)
    failed.refresh_from_db()
    assert failed.status == "failed"


def test_the_retry_button_on_the_case_page(clinician, other_clinician, other_unit_physician, admin_user, outsider):
    job = _failed_job(clinician)
    c = login(clinician)
    page = c.get(reverse("case_detail", args=[job.scan.case.uuid])).content.decode()
    url = reverse("job_retry", args=[job.uuid])
    assert f'action="{url}"' in page and ">Retry</button>" in page

    assert c.get(url).status_code == 405
    assert login(other_clinician).post(url).status_code == 404
    assert login(other_unit_physician).post(url).status_code == 404  # may upload, but not in this unit
    assert login(admin_user).post(url).status_code == 403
    assert login(outsider).post(url).status_code == 403
    response = c.post(url)
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == "queued"
    again = c.post(url)
    assert again.status_code == 409
    assert "only a failed analysis can be retried" in again.content.decode()

    model_register(acting_user=None, bundle_dir=settings.MODEL_DIR / "demo-pcam", activate=True)
    job_run(job_id=job.id)  # the cause is fixed: the retry succeeds
    assert ReviewItem.objects.filter(prediction__scan=job.scan).count() == 1


def test_an_upload_while_the_broker_is_down_is_accepted_quickly_and_stays_queued(clinician):
    started = time.monotonic()
    with celery_broker(f"redis://127.0.0.1:{free_port()}/0"):  # nothing listens there
        case = case_create(
            acting_user=clinician,
            patient_ref="PSN-7",
            body_site="skin",
            files=[IncomingFile(name="a.png", data=image_bytes())],
        )
    elapsed = time.monotonic() - started
    job = case.scans.get().job
    job.refresh_from_db()
    assert job.status == "queued"
    assert elapsed < 15, f"upload took {elapsed:.1f} s with the broker down"
    print(f"upload with the broker down took {elapsed:.2f} s")
    assert len(stored_files()) == 1


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_redelivered_job_whose_claimer_died_on_this_host_is_taken_over_at_once(clinician, active_model):
    import socket

    job = make_scan(clinician).job
    InferenceJob.objects.filter(pk=job.pk).update(
        status="running", attempts=1, claimed_by=f"{socket.gethostname()}:{_dead_pid()}"
    )
    job_run(job_id=job.id)  # the message Celery gave back when the pool child died
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert Prediction.objects.filter(scan=job.scan).count() == 1


@pytest.mark.parametrize("claimer", ["alive", "other-host", "out-of-attempts"])
def test_a_redelivered_job_whose_claimer_may_be_alive_is_left_alone(clinician, active_model, deadlines, claimer):
    import os
    import socket

    job = make_scan(clinician).job
    claimed_by = {
        "alive": f"{socket.gethostname()}:{os.getppid()}",
        "other-host": f"some-other-host:{_dead_pid()}",
        "out-of-attempts": f"{socket.gethostname()}:{_dead_pid()}",
    }[claimer]
    attempts = 2 if claimer == "out-of-attempts" else 1  # JOB_MAX_ATTEMPTS is 2 here
    InferenceJob.objects.filter(pk=job.pk).update(status="running", attempts=attempts, claimed_by=claimed_by)
    job_run(job_id=job.id)
    job.refresh_from_db()
    assert (job.status, job.attempts) == ("running", attempts)  # the sweeper's deadline decides
    assert not Prediction.objects.filter(scan=job.scan).exists()


@pytest.mark.django_db(transaction=True)
def test_two_attempts_storing_at_the_same_moment_give_one_prediction_and_one_review_item(clinician, active_model):
    """Two live attempts of one job (a sweeper requeue while a slow worker still ran)
    finish together: the row lock and the one-to-one constraints let one through."""
    import threading

    from django.db import connection

    job = make_scan(clinician).job
    InferenceJob.objects.filter(pk=job.pk).update(status="running", attempts=2)
    barrier = threading.Barrier(4)
    results: list[object] = []

    def store() -> None:
        try:
            barrier.wait(timeout=30)
            stored = predictions_store(
                model_version=active_model,
                outcomes=[JobOutcome(job_id=job.id, probabilities=[0.3, 0.7])],
                inference_ms=1.0,
            )
            results.append(stored[0] if stored else None)
        except Exception as exc:  # recorded, so the assertion below names it
            results.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 4
    assert sum(isinstance(r, Prediction) for r in results) == 1, results
    assert sum(r is None for r in results) == 3, results
    assert Prediction.objects.filter(scan=job.scan).count() == 1
    assert ReviewItem.objects.filter(prediction__scan=job.scan).count() == 1
