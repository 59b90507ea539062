"""Scans, heat maps and model bundles on a real S3 server (SeaweedFS), and what a
person notices when the store is misconfigured or goes away: a clear error at
start-up, a 503 for an upload, nothing half-written, no orphaned object once the
store is back, jobs that wait instead of failing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command

from diagnostics.inference import bundle_dir_for
from diagnostics.intake import storage
from diagnostics.intake.encryption import MAGIC
from diagnostics.ml.bundle import BundleError, sha256_file
from diagnostics.models import InferenceJob, Prediction, Scan
from diagnostics.services.jobs import job_run
from diagnostics.services.model_registry import model_register
from tests.factories import CaseFactory, make_scan
from tests.helpers import ROOT, api, image_bytes, stored_files

pytestmark = [pytest.mark.django_db, pytest.mark.s3]


def _objects(server, prefix: str) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    client = server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=server.bucket, Key=k)["Body"].read() for k in keys}


def _upload(user, case, *payloads: bytes):  # type: ignore[no-untyped-def]
    files = [SimpleUploadedFile(f"s{i}.png", data, "image/png") for i, data in enumerate(payloads)]
    return api(user).post(f"/api/v1/cases/{case.uuid}/scans/", {"files": files}, format="multipart")


def test_an_upload_is_stored_encrypted_in_the_bucket_once(s3_storage, settings, clinician, active_model):
    case = CaseFactory(created_by=clinician)
    data = image_bytes(color=(1, 2, 3))
    first = _upload(clinician, case, data)
    assert first.status_code == 201, first.content
    assert _upload(clinician, case, data).json()["repeated"]  # the same bytes again: recognised
    scan = Scan.objects.get()
    raw = _objects(s3_storage, f"{settings.S3_PREFIX}/scans/")
    assert list(raw) == [f"{settings.S3_PREFIX}/scans/{scan.storage_name}"]  # one object, content-addressed
    blob = next(iter(raw.values()))
    assert blob.startswith(MAGIC) and data not in blob  # ciphertext at rest
    assert storage.read_bytes(scan.storage_name) == data


def test_registering_publishes_the_bundle_and_a_host_without_it_fetches_checks_and_caches_it(
    s3_storage, settings, tmp_path
):
    version = model_register(acting_user=None, bundle_dir="demo-pcam", activate=True)
    published = _objects(s3_storage, f"{settings.S3_PREFIX}/models/bundles/{version.sha256}/")
    index = json.loads(published[f"{settings.S3_PREFIX}/models/bundles/{version.sha256}/index.json"])
    assert index["files"]["model.keras"] == version.sha256
    # A worker host: its model folder is empty, its cache too.
    settings.MODEL_DIR = tmp_path / "empty-models"
    settings.MODEL_DIR.mkdir()
    folder = bundle_dir_for(version)
    assert folder == Path(settings.MODEL_CACHE_DIR) / version.sha256
    assert sha256_file(folder / "model.keras") == version.sha256
    assert (folder / "manifest.json").read_bytes() == (ROOT / "models/demo-pcam/manifest.json").read_bytes()
    # Cached: the next load needs no store at all.
    s3_storage.stop()
    try:
        assert bundle_dir_for(version) == folder
    finally:
        s3_storage.start()


def test_a_bundle_altered_in_the_store_is_refused_and_not_cached(s3_storage, settings, tmp_path):
    version = model_register(acting_user=None, bundle_dir="demo-pcam", activate=True)
    key = f"{settings.S3_PREFIX}/models/bundles/{version.sha256}/model.keras"
    s3_storage.client().put_object(Bucket=s3_storage.bucket, Key=key, Body=b"not the model")
    settings.MODEL_DIR = tmp_path / "empty-models"
    settings.MODEL_DIR.mkdir()
    with pytest.raises(BundleError, match="does not match its SHA-256"):
        bundle_dir_for(version)
    assert not (Path(settings.MODEL_CACHE_DIR) / version.sha256).exists()
    assert [p.name for p in Path(settings.MODEL_CACHE_DIR).iterdir() if not p.name.endswith(".lock")] == []


def test_a_bundle_never_published_is_a_stated_job_error(s3_storage, settings, clinician, tmp_path, monkeypatch):
    from diagnostics import inference

    monkeypatch.setattr(inference, "_cached", {})  # a fresh worker process: no model loaded yet
    settings.STORAGES = {k: v for k, v in settings.STORAGES.items() if k != "models"}
    version = model_register(acting_user=None, bundle_dir="demo-pcam", activate=True)  # before object storage
    settings.STORAGES = {**settings.STORAGES, "models": s3_storage_backend_for(settings, "models")}
    settings.MODEL_DIR = tmp_path / "empty-models"
    settings.MODEL_DIR.mkdir()
    scan = make_scan(clinician)
    job_run(job_id=scan.job.id)
    job = InferenceJob.objects.get(pk=scan.job.pk)
    assert job.status == InferenceJob.Status.FAILED
    assert "never published to object storage" in job.error
    assert version.status == "active"


def s3_storage_backend_for(settings, folder: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
    scans = settings.STORAGES["scans"]["OPTIONS"]
    location = scans["location"].rsplit("/", 1)[0] + "/" + folder
    return {**settings.STORAGES["scans"], "OPTIONS": {**scans, "location": location}}


def _check(env: dict[str, str], code: str = "from django.core.management import execute_from_command_line as e; "
           "e(['manage.py', 'check'])") -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", f"import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', "
         f"'cancerweb.settings'); {code}"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_start_up_stops_on_a_missing_bucket_or_refused_credentials(s3_env):
    missing = _check({**s3_env, "CANCERWEB_STORAGE_URL": "s3://no-such-bucket"})
    assert missing.returncode != 0 and "object store s3://no-such-bucket: the bucket does not exist" in missing.stderr
    # gunicorn loads cancerweb.wsgi: the same check stops it before it serves anything.
    wsgi = _check({**s3_env, "CANCERWEB_STORAGE_URL": "s3://no-such-bucket"}, code="import cancerweb.wsgi")
    assert wsgi.returncode != 0 and "ImproperlyConfigured: object store" in wsgi.stderr
    assert "the bucket does not exist" in wsgi.stderr
    refused = _check({**s3_env, "CANCERWEB_S3_SECRET_ACCESS_KEY": "not-the-secret"})
    assert refused.returncode != 0 and "the store refused the credentials" in refused.stderr
    half = _check({**s3_env, "CANCERWEB_S3_SECRET_ACCESS_KEY": ""})
    assert half.returncode != 0 and "set both CANCERWEB_S3_ACCESS_KEY_ID and CANCERWEB_S3_SECRET_ACCESS_KEY" in (
        half.stderr
    )
    assert _check(s3_env).returncode == 0


def test_a_store_down_at_start_up_is_a_warning_then_uploads_answer_503_and_keep_nothing(
    s3_storage, s3_env, clinician, active_model
):
    case = CaseFactory(created_by=clinician)
    s3_storage.stop()
    try:
        started = _check(s3_env)
        assert started.returncode == 0  # the web may start; it says what is wrong
        assert "cannot reach the store" in started.stderr + started.stdout
        response = _upload(clinician, case, image_bytes(color=(4, 5, 6)))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert response["Retry-After"] == "30"
        assert not Scan.objects.exists() and not InferenceJob.objects.exists()
        health = api().get("/health/", REMOTE_ADDR="127.0.0.1")
        assert health.status_code == 503 and health.json()["checks"]["storage"]["ok"] is False
    finally:
        s3_storage.start()
    assert _upload(clinician, case, image_bytes(color=(4, 5, 6))).status_code == 201
    assert api().get("/health/", REMOTE_ADDR="127.0.0.1").json()["checks"]["storage"]["ok"] is True


def test_a_store_that_dies_mid_upload_leaves_no_rows_and_no_orphan_once_back(
    s3_storage, clinician, active_model, monkeypatch
):
    case = CaseFactory(created_by=clinician)
    real_store = storage.store_bytes
    calls = {"n": 0}

    def store_then_the_store_dies(**kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            s3_storage.stop()  # the real server goes away between the first and second file
        return real_store(**kwargs)

    monkeypatch.setattr(storage, "store_bytes", store_then_the_store_dies)
    try:
        response = _upload(clinician, case, *(image_bytes(color=(i, 7, 7)) for i in range(3)))
        assert response.status_code == 503 and response.json()["error"]["code"] == "storage_unavailable"
        assert not Scan.objects.exists()
    finally:
        s3_storage.start()
    # The first file reached the store and could not be removed while it was down.
    leftover = stored_files()
    assert len(leftover) == 1
    call_command("sweep_storage", "--grace-seconds", "0", stdout=open(os.devnull, "w"))  # noqa: SIM115
    assert stored_files() == set()


def test_a_job_that_finds_the_store_down_waits_and_then_succeeds(s3_storage, clinician, active_model):
    scan = make_scan(clinician)
    s3_storage.stop()
    try:
        job_run(job_id=scan.job.id)
        job = InferenceJob.objects.get(pk=scan.job.pk)
        # Back in the queue, no attempt spent: the store is down, not the job.
        assert (job.status, job.attempts, job.error) == (InferenceJob.Status.QUEUED, 0, "")
    finally:
        s3_storage.start()
    job_run(job_id=scan.job.id)
    assert InferenceJob.objects.get(pk=scan.job.pk).status == InferenceJob.Status.SUCCEEDED
    prediction = Prediction.objects.get(scan=scan)
    assert storage.read_bytes(prediction.heatmap_storage_name).startswith(b"\x89PNG")


def test_rotation_on_the_object_store_replaces_each_object_in_one_put(s3_storage, settings, clinician):
    from cancerweb.env import generate_key_entry, parse_key_entries
    from diagnostics.intake.encryption import blob_key_id

    scans = [make_scan(clinician, color=(i, 9, 9), ref=f"PSN-{i}") for i in range(2)]
    plain = {s.storage_name: storage.read_bytes(s.storage_name) for s in scans}
    settings.ENCRYPTION_KEYS = [parse_key_entries(generate_key_entry("k2"))[0], *settings.ENCRYPTION_KEYS]
    call_command("rotate_encryption_key", stdout=open(os.devnull, "w"))  # noqa: SIM115
    settings.ENCRYPTION_KEYS = settings.ENCRYPTION_KEYS[:1]  # the old key is gone
    for name, data in plain.items():
        assert blob_key_id(storage.read_raw(name)) == "k2" and storage.read_bytes(name) == data
    assert stored_files() == set(plain)  # no copies left behind
