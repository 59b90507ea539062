"""/health/ and /metrics: aggregates only, for this machine or a token holder."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from diagnostics.models import InferenceJob
from diagnostics.services.cases import case_create
from diagnostics.services.jobs import job_run, worker_heartbeat
from tests.factories import make_scan
from tests.helpers import free_port, image_bytes, login, stored_files

pytestmark = [pytest.mark.django_db, pytest.mark.storage]

TOKEN = "monitoring-token-for-tests-0123456789"


def test_health_is_200_with_every_check_when_all_is_well(clinician):
    make_scan(clinician, ref="PSN-SECRET-REF")
    worker_heartbeat(hostname="w1@host", pid=123)
    response = Client().get(reverse("health"))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "storage", "worker", "queue"}
    assert body["checks"]["queue"]["depth"] == 1
    assert body["checks"]["queue"]["oldest_queued_age_s"] >= 0
    assert "PSN-SECRET-REF" not in response.content.decode()
    assert len(stored_files()) == 1  # the storage probe cleaned up after itself


def test_health_is_503_without_a_worker_heartbeat_or_with_an_old_queue(clinician, settings):
    response = Client().get(reverse("health"))
    assert response.status_code == 503
    assert response.json()["checks"]["worker"] == {
        "ok": False,
        "error": "TimeoutError",
        "ms": pytest.approx(0, abs=1e3),
    }
    worker_heartbeat(hostname="w1@host", pid=123)
    job = make_scan(clinician).job
    InferenceJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(hours=2))
    settings.HEALTH_MAX_QUEUED_AGE_S = 600
    body = Client().get(reverse("health")).json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["queue"]["ok"] is False


def test_health_is_503_when_the_broker_is_unreachable(settings):
    from tests.helpers import celery_broker

    worker_heartbeat(hostname="w1@host", pid=123)
    with celery_broker(f"redis://127.0.0.1:{free_port()}/0"):
        response = Client().get(reverse("health"))
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["ok"] is False


def test_monitoring_refuses_other_machines_and_proxied_requests_without_the_token(settings):
    settings.MONITORING_TOKEN = TOKEN
    for name in ("health", "metrics"):
        assert Client(REMOTE_ADDR="10.0.0.5").get(reverse(name)).status_code == 403
        assert Client().get(reverse(name), HTTP_X_FORWARDED_FOR="10.0.0.5").status_code == 403
        wrong = Client(REMOTE_ADDR="10.0.0.5").get(reverse(name), HTTP_AUTHORIZATION="Bearer nope")
        assert wrong.status_code == 403
        right = Client(REMOTE_ADDR="10.0.0.5").get(reverse(name), HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
        assert right.status_code in (200, 503)
        assert Client().post(reverse(name)).status_code == 405


def test_metrics_count_jobs_by_status_and_the_latency_histogram(clinician, active_model):
    done = make_scan(clinician, color=(1, 2, 3)).job
    job_run(job_id=done.id)
    make_scan(clinician, color=(4, 5, 6), ref="PSN-2")
    text = Client().get(reverse("metrics")).content.decode()
    assert 'cancerweb_inference_jobs{status="queued"} 1.0' in text
    assert 'cancerweb_inference_jobs{status="succeeded"} 1.0' in text
    assert 'cancerweb_inference_jobs{status="failed"} 0.0' in text
    assert "cancerweb_inference_latency_seconds_count 1.0" in text
    assert 'cancerweb_inference_latency_seconds_bucket{le="+Inf"} 1.0' in text
    assert "cancerweb_oldest_queued_job_age_seconds" in text


@pytest.mark.django_db(transaction=True)
def test_an_upload_while_postgresql_is_unreachable_gets_a_clear_503_and_stores_nothing(clinician):
    case = case_create(acting_user=clinician, patient_ref="PSN-9", body_site="skin")
    client = login(clinician)
    real_port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = str(free_port())  # a port where no database listens
    try:
        response = client.post(
            reverse("case_upload", args=[case.uuid]),
            {"files": [SimpleUploadedFile("a.png", image_bytes())]},
        )
    finally:
        connection.close()
        connection.settings_dict["PORT"] = real_port
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert "Service temporarily unavailable" in response.content.decode()
    assert "nothing was saved" in response.content.decode()
    assert stored_files() == set()
    assert not case.scans.exists()


def test_health_is_503_while_jobs_stay_running_past_their_deadline(clinician, settings):
    worker_heartbeat(hostname="w1@host", pid=123)
    job = make_scan(clinician).job
    started = timezone.now() - timedelta(seconds=settings.JOB_RUNNING_DEADLINE_S + 60)
    InferenceJob.objects.filter(pk=job.pk).update(status=InferenceJob.Status.RUNNING, started_at=started)
    response = Client().get(reverse("health"))
    assert response.status_code == 503
    queue = response.json()["checks"]["queue"]
    assert queue["ok"] is False
    assert queue["running_past_deadline"] == 1
    assert "running past their deadline" in queue["error"]
    # A job still within its deadline is healthy work.
    InferenceJob.objects.filter(pk=job.pk).update(started_at=timezone.now())
    assert Client().get(reverse("health")).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_a_503_under_the_api_has_the_api_error_shape(clinician):
    from tests.helpers import api

    case = case_create(acting_user=clinician, patient_ref="PSN-9", body_site="skin")
    client = api(clinician)
    real_port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = str(free_port())
    try:
        response = client.post(
            reverse("api_case_scans", args=[case.uuid]),
            {"files": [SimpleUploadedFile("a.png", image_bytes())]},
            format="multipart",
        )
    finally:
        connection.close()
        connection.settings_dict["PORT"] = real_port
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response["Retry-After"] == "30"
    error = response.json()["error"]
    assert error["code"] == "database_unavailable"
    assert "nothing was saved" in error["message"]
    assert stored_files() == set()


def test_health_and_metrics_show_where_each_live_worker_runs_its_network():
    from diagnostics.models import WorkerHeartbeat
    from diagnostics.services.jobs import worker_device_record

    worker_heartbeat(hostname="gpu0@host", pid=11)
    worker_device_record(hostname="gpu0@host", device="cuda:0 (NVIDIA H200)", backend="jax", precision="bfloat16")
    worker_device_record(hostname="cpu@host", device="cpu", backend="tensorflow", precision="float32")
    worker_heartbeat(hostname="cpu@host", pid=12)
    worker_heartbeat(hostname="gone@host", pid=13)
    WorkerHeartbeat.objects.filter(hostname="gone@host").update(last_seen=timezone.now() - timedelta(hours=1))
    workers = Client().get(reverse("health")).json()["checks"]["worker"]["workers"]
    assert workers == [
        {"hostname": "cpu@host", "device": "cpu", "backend": "tensorflow", "precision": "float32"},
        {"hostname": "gpu0@host", "device": "cuda:0 (NVIDIA H200)", "backend": "jax", "precision": "bfloat16"},
    ]
    assert WorkerHeartbeat.objects.get(hostname="gpu0@host").pid == 11  # the device write keeps the beat's pid
    text = Client().get(reverse("metrics")).content.decode()
    gpu_labels = 'backend="jax",device="cuda:0 (NVIDIA H200)",hostname="gpu0@host",precision="bfloat16"'
    assert f"cancerweb_worker_device{{{gpu_labels}}} 1.0" in text
    assert 'hostname="cpu@host"' in text and 'hostname="gone@host"' not in text
