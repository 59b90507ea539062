"""Drift monitoring: a stream like the reference raises no alarm; a stream whose colour
balance changed (another stain, another scanner) raises one, which notifies the admins
in the app and by e-mail and shows on the dashboard and in /metrics."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.core import mail
from django.urls import reverse
from PIL import Image

from diagnostics.models import DriftCheck, DriftReference, Notification, Prediction
from diagnostics.tasks import check_drift_task
from tests.factories import CaseFactory, PredictionFactory, ReviewDecisionFactory, ScanFactory
from tests.helpers import login

pytestmark = pytest.mark.django_db
HE = (200, 90, 150)  # pink-purple, like an H&E patch
BLUE_SHIFT = (120, 90, 210)  # the same tissue under a stain or scanner with another colour balance


def _png(colour: tuple[int, int, int], rng: np.random.Generator) -> bytes:
    noise = rng.normal(0, 18, size=(48, 48, 3))
    arr = np.clip(np.array(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def _stream(clinician, model, colour, n, seed):  # type: ignore[no-untyped-def]
    """``n`` predictions on new images around ``colour``, with the reference's mix of
    answers and confidences."""
    rng = np.random.default_rng(seed)
    case = CaseFactory(created_by=clinician, patient_ref=f"PSN-DRIFT-{seed}")
    for i in range(n):
        scan = ScanFactory(case=case, name=f"d{seed}-{i}.png", data=_png(colour, rng))
        p = float(np.clip(rng.normal(0.8, 0.08), 0.55, 0.99))
        PredictionFactory(job=scan.job, model_version=model, probabilities=[p, 1 - p] if i % 3 else [1 - p, p])


@pytest.fixture
def active_model(settings, tmp_path):  # type: ignore[no-untyped-def]
    """The demo bundle without its drift reference, so that these tests see the "like
    the start" baseline (the bundle's own reference: the test after them)."""
    import json
    import shutil

    from diagnostics.services.model_registry import model_register

    settings.MODEL_DIR = tmp_path / "models"
    bundle = settings.MODEL_DIR / "no-reference"
    shutil.copytree(django_settings.BASE_DIR / "models" / "demo-pcam", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["drift_reference"] = {}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return model_register(acting_user=None, bundle_dir="no-reference", activate=True)


@pytest.fixture
def small_windows(settings):  # type: ignore[no-untyped-def]
    settings.DRIFT_BASELINE_N = 12
    settings.DRIFT_WINDOW = 12
    settings.DRIFT_MIN_WINDOW = 10
    settings.DRIFT_MIN_SIGNED = 3


def test_drifted_colour_balance_raises_the_alarm_and_a_like_stream_none(  # type: ignore[no-untyped-def]
    small_windows, clinician, admin_user, physician, active_model, django_capture_on_commit_callbacks
):
    assert django_settings.CELERY_BEAT_SCHEDULE["check-model-drift"]["task"] == "diagnostics.check_drift"
    admin_user.email = "admin@hospital.example"
    admin_user.save()
    _stream(clinician, active_model, HE, 12, seed=1)
    assert check_drift_task() == 0  # the reference is made, nothing newer to check yet
    reference = DriftReference.objects.get(model_version=active_model)
    assert reference.n == 12 and reference.source == "baseline"

    _stream(clinician, active_model, HE, 12, seed=2)
    assert check_drift_task() == 1
    calm = DriftCheck.objects.get()
    assert not calm.alarm, calm.measures
    assert calm.measures["colour_psi"]["value"] < django_settings.DRIFT_PSI_THRESHOLD
    assert not Notification.objects.filter(kind="drift_alarm").exists()

    _stream(clinician, active_model, BLUE_SHIFT, 12, seed=3)
    with django_capture_on_commit_callbacks(execute=True):  # the e-mail leaves after commit
        check_drift_task()
    drifted = DriftCheck.objects.first()
    assert drifted is not None and drifted.alarm
    assert drifted.measures["colour_psi"]["alarm"], drifted.measures
    assert not drifted.measures["stage_psi"]["alarm"]  # the answers did not change, the images did
    for name, check in (("like the reference", calm), ("blue-shifted", drifted)):
        print(
            f"DRIFT {name}: "
            + ", ".join(f"{k}={v['value']:.4g}" for k, v in check.measures.items() if v["value"] is not None)
        )
    note = Notification.objects.get(kind="drift_alarm", user=admin_user)
    assert "colour psi" in note.message and str(active_model) in note.message
    assert [m.to for m in mail.outbox] == [["admin@hospital.example"]]
    assert not Notification.objects.filter(kind="drift_alarm", user=physician).exists()

    # A lasting drift does not notify again on the next run.
    check_drift_task()
    assert Notification.objects.filter(kind="drift_alarm").count() == 1

    # Physicians reject the window's answers: agreement with the signed stages falls.
    for prediction in Prediction.objects.order_by("-id")[:3]:
        other = next(label for label in prediction.labels if label != prediction.predicted_label)
        ReviewDecisionFactory(
            review_item=prediction.review_item, outcome="rejected", stage=other, reason="not what I see"
        )
    check_drift_task()
    agreement = DriftCheck.objects.first().measures["agreement"]  # type: ignore[union-attr]
    assert agreement["alarm"] and agreement["value"] == 0.0 and agreement["detail"]["signed"] == 3
    assert Notification.objects.filter(kind="drift_alarm").count() == 2
    assert "agreement" in Notification.objects.filter(kind="drift_alarm").first().message  # type: ignore[union-attr]

    page = login(admin_user).get(reverse("dashboard")).content.decode()
    assert "Drift of the active models" in page and "ALARM" in page
    assert "Drift of the active models" not in login(physician).get(reverse("dashboard")).content.decode()
    metrics = login(admin_user).get(reverse("metrics")).content.decode()
    assert f'cancerweb_model_drift_alarm{{measure="colour_psi",model="{active_model}"}} 1.0' in metrics
    assert f'cancerweb_model_drift_alarm{{measure="stage_psi",model="{active_model}"}} 0.0' in metrics
    assert f'cancerweb_model_drift{{measure="colour_psi",model="{active_model}"}}' in metrics


def test_a_bundle_that_carries_a_reference_is_checked_against_it(  # type: ignore[no-untyped-def]
    small_windows, settings, tmp_path, clinician
):
    """train_model writes the validation images' statistics into the manifest; the
    registry stores them as the version's reference, so its first predictions are
    already checked (here: blue-shifted images against an H&E-coloured reference)."""
    import json
    import shutil

    from diagnostics.ml.drift import reference_stats
    from diagnostics.services.model_registry import model_register

    settings.MODEL_DIR = tmp_path / "models"
    bundle = settings.MODEL_DIR / "with-reference"
    shutil.copytree(django_settings.BASE_DIR / "models" / "demo-pcam", bundle)
    rng = np.random.default_rng(7)
    images = np.stack([np.asarray(Image.open(io.BytesIO(_png(HE, rng)))) for _ in range(20)])
    probs = np.tile([[0.8, 0.2], [0.3, 0.7]], (10, 1))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["drift_reference"] = reference_stats(images, probs, manifest["labels"])
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    model = model_register(acting_user=None, bundle_dir="with-reference", activate=True)
    reference = DriftReference.objects.get(model_version=model)
    assert reference.source == "bundle" and reference.n == 20
    # The features' reference: the distances of the bundle's held-out images (its ood section).
    assert reference.stats["feature_scores"] == manifest["ood"]["reference_scores"]
    assert len(reference.stats["feature_scores"]) >= django_settings.DRIFT_MIN_WINDOW

    _stream(clinician, model, BLUE_SHIFT, 10, seed=4)
    check_drift_task()
    check = DriftCheck.objects.get(model_version=model)
    assert check.measures["colour_psi"]["alarm"]
    assert check.measures["image_size_psi"]["value"] is None  # a bundle's reference has no sizes


def _patch_stream(clinician, files, seed, shift=None):  # type: ignore[no-untyped-def]
    """Real PCam patches through the real worker path (the network's features and their
    distances to the training classes stored with each prediction); ``shift`` changes
    their colour balance first."""
    from diagnostics.services.jobs import job_run

    case = CaseFactory(created_by=clinician, patient_ref=f"PSN-FEAT-{seed}")
    for i, path in enumerate(files):
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        if shift is not None:
            arr = np.clip(arr * np.array(shift, dtype=np.float32), 0, 255)
        out = io.BytesIO()
        Image.fromarray(arr.astype(np.uint8)).save(out, format="PNG")
        scan = ScanFactory(case=case, name=f"f{seed}-{i}.png", data=out.getvalue())
        job_run(job_id=scan.job.id)


def test_the_penultimate_features_drift_when_the_colour_balance_changes(  # type: ignore[no-untyped-def]
    small_windows, clinician, active_model
):
    from tests.ml_tests.conftest import PCAM

    files = (
        sorted((PCAM / "valid" / "metastasis").iterdir())[:18]
        + sorted((PCAM / "valid" / "no-metastasis").iterdir())[:18]
    )
    rng = np.random.default_rng(5)
    files = [files[i] for i in rng.permutation(len(files))]
    _patch_stream(clinician, files[:12], seed=1)
    assert check_drift_task() == 0
    assert len(DriftReference.objects.get().stats["feature_scores"]) == 12

    _patch_stream(clinician, files[12:24], seed=2)
    check_drift_task()
    calm = DriftCheck.objects.get().measures["feature_distance_ks_p"]
    assert calm["value"] is not None and not calm["alarm"], calm

    _patch_stream(clinician, files[24:36], seed=3, shift=(0.45, 0.9, 1.7))  # a much bluer stain or scanner
    check_drift_task()
    drifted = DriftCheck.objects.first().measures["feature_distance_ks_p"]  # type: ignore[union-attr]
    assert drifted["alarm"], drifted
    assert drifted["detail"]["window_median"] > drifted["detail"]["reference_median"]
    print(f"FEATURE DRIFT like the reference: {calm}; colour-shifted: {drifted}")
