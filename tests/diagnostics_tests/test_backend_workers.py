"""The same uploads through a real Celery worker on TensorFlow (the CPU hosts) and one
on JAX (what a GPU host runs; JAX's CPU wheels here): both store the same predictions."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from django.conf import settings
from django.test import Client
from django.urls import reverse
from PIL import Image

from diagnostics.intake import storage
from diagnostics.models import InferenceJob, Prediction
from diagnostics.services.cases import IncomingFile, case_create
from diagnostics.services.model_registry import model_register
from tests.conftest import celery_worker
from tests.helpers import sample_bytes

pytestmark = [pytest.mark.worker, pytest.mark.storage, pytest.mark.django_db(transaction=True)]

SAMPLES = ["pcam-metastasis-1.jpg", "pcam-metastasis-2.jpg", "pcam-no-metastasis-1.jpg", "pcam-no-metastasis-2.jpg"]


def _through_worker(user, ref: str) -> dict[str, Prediction]:  # type: ignore[no-untyped-def]
    files = [IncomingFile(name=name, data=sample_bytes(name)) for name in SAMPLES]
    case = case_create(acting_user=user, patient_ref=ref, body_site="sentinel node", files=files)
    deadline = time.monotonic() + 180
    while InferenceJob.objects.filter(scan__case=case, status=InferenceJob.Status.SUCCEEDED).count() < len(SAMPLES):
        failed = InferenceJob.objects.filter(scan__case=case, status=InferenceJob.Status.FAILED).first()
        assert failed is None, failed.error
        assert time.monotonic() < deadline, "the worker did not finish"
        time.sleep(0.3)
    return {p.scan.original_name: p for p in Prediction.objects.filter(scan__case=case).select_related("scan")}


def _heat(prediction: Prediction) -> np.ndarray:
    png = storage.read_bytes(prediction.heatmap_storage_name)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"), dtype=np.int16)


def test_a_jax_worker_and_a_tensorflow_worker_store_the_same_predictions(clinician, tmp_path: Path) -> None:
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    model_register(acting_user=None, bundle_dir=settings.MODEL_DIR / "demo-pcam", activate=True)
    results, workers = {}, {}
    for backend in ("tensorflow", "jax"):
        with celery_worker(tmp_path / f"{backend}.log", {"KERAS_BACKEND": backend}, name=backend):
            results[backend] = _through_worker(clinician, f"PSN-{backend.upper()}")
            health = Client().get(reverse("health")).json()["checks"]["worker"]
            workers[backend] = [w for w in health["workers"] if w["hostname"].startswith(f"{backend}-")]
        log = (tmp_path / f"{backend}.log").read_text()
        assert "no GPU is visible to this worker" in log  # it says so, and runs on CPU
    # Each worker said where its network ran, in /health/.
    assert [(w["backend"], w["device"]) for w in workers["tensorflow"]] == [("tensorflow", "cpu")]
    assert [(w["backend"], w["device"]) for w in workers["jax"]] == [("jax", "cpu")]
    tf, jax = results["tensorflow"], results["jax"]
    assert set(tf) == set(jax) == set(SAMPLES)
    for name in SAMPLES:
        assert tf[name].predicted_label == jax[name].predicted_label
        assert np.abs(np.array(tf[name].probabilities) - np.array(jax[name].probabilities)).max() < 1e-4
        assert tf[name].model_version_id == jax[name].model_version_id
        # The heat maps agree to within a level or two of the 256-level palette.
        assert np.abs(_heat(tf[name]) - _heat(jax[name])).max() <= 8
    # The four images are not all one answer: the comparison is not trivial.
    assert len({p.predicted_label for p in tf.values()}) == 2
