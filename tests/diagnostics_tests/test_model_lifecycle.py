"""Model lifecycle: registry per task, calibration and the uncertain flag, heat maps stored
with the prediction and served only to permitted users, and the model commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse

from accounts.models import AuditEvent
from diagnostics import inference
from diagnostics.intake import storage
from diagnostics.models import Case, ModelVersion, Prediction
from diagnostics.selectors.model_registry import active_tasks
from diagnostics.selectors.reviews import review_queue
from diagnostics.services.cases import IncomingFile, case_create
from diagnostics.services.jobs import job_run
from diagnostics.services.model_registry import model_activate, model_register
from tests.factories import make_prediction, make_scan
from tests.helpers import SAMPLES, login, sample_bytes

pytestmark = pytest.mark.django_db
REPO_DEMO = settings.MODEL_DIR / "demo-pcam"
DEMO = "demo-pcam"  # registered by its name in the (per-test) model folder


@pytest.fixture(autouse=True)
def model_dir(settings, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    """Bundles can be registered only from the model folder: each test gets its own."""
    settings.MODEL_DIR = tmp_path / "models"
    shutil.copytree(REPO_DEMO, settings.MODEL_DIR / DEMO)
    return settings.MODEL_DIR


def copy_bundle(tmp_path: Path, **changes: object) -> Path:
    """The demo bundle under another name/version/task/labels (same 2-output network),
    in the model folder."""
    root = Path(settings.MODEL_DIR)
    out = root / f"bundle-{changes.get('version', 'x')}-{len(list(root.iterdir()))}"
    shutil.copytree(REPO_DEMO, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(changes)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_one_active_model_per_task_side_by_side(tmp_path):
    pcam = model_register(acting_user=None, bundle_dir=DEMO, activate=True)
    other = copy_bundle(tmp_path, name="us", version="1", task="ultrasound", labels=["benign", "malignant"])
    us = model_register(acting_user=None, bundle_dir=other, activate=True)
    assert set(ModelVersion.objects.filter(status="active")) == {pcam, us}
    assert active_tasks() == sorted([pcam.task, "ultrasound"])

    # A new version of the same task retires the old one of that task only.
    newer = copy_bundle(tmp_path, version="2.0", task=pcam.task)
    v2 = model_register(acting_user=None, bundle_dir=newer, activate=True)
    pcam.refresh_from_db()
    us.refresh_from_db()
    assert (pcam.status, v2.status, us.status) == ("retired", "active", "active")
    actions = list(AuditEvent.objects.filter(object_id=str(pcam.uuid)).values_list("action", flat=True))
    assert "model.retire" in actions


def test_activating_different_labels_is_refused_unless_forced(tmp_path):
    pcam = model_register(acting_user=None, bundle_dir=DEMO, activate=True)
    renamed = copy_bundle(tmp_path, version="2.0", labels=["N0", "N1"])
    mv = model_register(acting_user=None, bundle_dir=renamed)
    with pytest.raises(ValidationError, match="would change the task's stages"):
        model_activate(acting_user=None, model_version=mv)
    mv.refresh_from_db()
    pcam.refresh_from_db()
    assert (mv.status, pcam.status) == ("draft", "active")  # nothing changed

    model_activate(acting_user=None, model_version=mv, force_labels=True)
    assert ModelVersion.objects.get(status="active", task=pcam.task) == mv
    event = AuditEvent.objects.filter(action="model.activate", object_id=str(mv.uuid)).get()
    assert event.data["labels_changed_forced"] is True


def test_hash_mismatch_is_refused_on_register_and_on_load(tmp_path, clinician):
    bad = copy_bundle(tmp_path, version="tampered")
    with (bad / "model.keras").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(ValidationError, match="does not match the manifest"):
        model_register(acting_user=None, bundle_dir=bad)
    assert not ModelVersion.objects.filter(version="tampered").exists()

    good = copy_bundle(tmp_path, version="later-tampered")
    mv = model_register(acting_user=None, bundle_dir=good, activate=True)
    with (good / "model.keras").open("ab") as fh:
        fh.write(b"x")
    # A fresh worker process: a model already in memory was verified when it was loaded.
    inference._cached.clear()
    scan = make_scan(clinician)
    job_run(job_id=scan.job.id)
    scan.job.refresh_from_db()
    assert scan.job.status == "failed"
    assert not Prediction.objects.filter(model_version=mv).exists()


def test_activating_a_new_version_never_changes_past_predictions(tmp_path, clinician):
    v1 = model_register(acting_user=None, bundle_dir=DEMO, activate=True)
    scan = make_scan(clinician)
    job_run(job_id=scan.job.id)
    before = Prediction.objects.get(scan=scan)
    v2 = model_register(acting_user=None, bundle_dir=copy_bundle(tmp_path, version="2.0"), activate=True)
    after = Prediction.objects.get(scan=scan)
    assert after.model_version == v1 != v2
    assert (after.probabilities, after.predicted_label, after.labels) == (
        before.probabilities,
        before.predicted_label,
        before.labels,
    )


def test_cases_choose_a_task_and_the_worker_uses_its_model(tmp_path, clinician):
    pcam = model_register(acting_user=None, bundle_dir=DEMO, activate=True)
    us = model_register(
        acting_user=None,
        bundle_dir=copy_bundle(tmp_path, name="us", version="1", task="ultrasound", labels=["benign", "malignant"]),
        activate=True,
    )
    file = IncomingFile(name="a.jpg", data=sample_bytes())
    with pytest.raises(ValidationError, match="choose the task"):
        case_create(acting_user=clinician, patient_ref="P-1", body_site="breast", files=[file])
    with pytest.raises(ValidationError, match="no active model answers"):
        case_create(acting_user=clinician, patient_ref="P-1", body_site="b", task="x", files=[file])
    assert not Case.objects.exists()  # nothing half-written

    case = case_create(acting_user=clinician, patient_ref="P-1", body_site="breast", task="ultrasound", files=[file])
    scan = case.scans.get()
    job_run(job_id=scan.job.id)
    pred = Prediction.objects.get(scan=scan)
    assert pred.model_version == us != pcam
    assert pred.labels == ["benign", "malignant"]


def test_new_case_form_lists_tasks_with_an_active_model_and_rejects_others(tmp_path, clinician):
    model_register(acting_user=None, bundle_dir=DEMO, activate=True)
    model_register(
        acting_user=None, bundle_dir=copy_bundle(tmp_path, name="us", version="1", task="ultrasound"), activate=True
    )
    client = login(clinician)
    page = client.get(reverse("case_new")).content.decode()
    assert 'value="ultrasound"' in page and "Lymph-node" in page
    with open(SAMPLES / "pcam-metastasis-1.jpg", "rb") as fh:
        bad = client.post(
            reverse("case_new"), {"patient_ref": "P-2", "body_site": "b", "task": "retired-task", "files": fh}
        )
    assert bad.status_code == 400
    assert "has no active model" in bad.content.decode()
    assert not Case.objects.exists()


def test_calibration_temperature_is_applied_and_low_confidence_is_flagged_uncertain(tmp_path, clinician):
    import numpy as np

    from diagnostics.ml.runner import InferenceRunner

    hot = copy_bundle(tmp_path, version="hot", temperature=1.0, uncertain_below=0.99)
    runner = InferenceRunner(hot)
    x = np.stack([runner.preprocess(sample_bytes())])
    logits = runner.bare_call(x)[0]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert np.allclose(runner.predict_arrays(x)[0], expected, atol=1e-6)
    cooler = InferenceRunner(copy_bundle(tmp_path, version="cool", temperature=4.0))
    z = logits / 4.0
    assert np.allclose(cooler.predict_arrays(x)[0], np.exp(z - z.max()) / np.exp(z - z.max()).sum(), atol=1e-6)

    mv = model_register(acting_user=None, bundle_dir=hot, activate=True)
    assert (mv.temperature, mv.uncertain_below) == (1.0, 0.99)
    sure = make_prediction(clinician, mv, [0.995, 0.005], ref="P-SURE")
    unsure = make_prediction(clinician, mv, [0.9, 0.1], ref="P-UNSURE", color=(10, 10, 10))
    assert (sure.uncertain, unsure.uncertain) == (False, True)


def test_uncertain_items_come_first_in_the_queue_and_are_marked(tmp_path, clinician, physician):
    mv = model_register(
        acting_user=None, bundle_dir=copy_bundle(tmp_path, version="u", uncertain_below=0.7), activate=True
    )
    confident_advanced = make_prediction(clinician, mv, [0.05, 0.95], ref="P-A")
    uncertain_early = make_prediction(clinician, mv, [0.6, 0.4], ref="P-B", color=(1, 2, 3))
    confident_early = make_prediction(clinician, mv, [0.9, 0.1], ref="P-C", color=(4, 5, 6))
    queue = [i.prediction for i in review_queue(user=physician)]
    assert queue == [uncertain_early, confident_advanced, confident_early]
    client = login(physician)
    page = client.get(reverse("review_queue")).content.decode()
    assert page.count('class="badge uncertain"') == 1
    detail = client.get(reverse("review_detail", args=[uncertain_early.review_item.uuid])).content.decode()
    assert "Uncertain:" in detail


def test_worker_stores_a_heat_map_served_only_to_reviewers(clinician, other_clinician, physician, outsider):
    model_register(acting_user=None, bundle_dir=DEMO, activate=True)
    # A real lymph-node patch: a flat test colour is outside the model's training data,
    # and a flagged input's heat map is withheld (test_out_of_distribution.py).
    scan = make_scan(clinician, data=sample_bytes("pcam-metastasis-1.jpg"), name="patch.jpg")
    job_run(job_id=scan.job.id)
    pred = Prediction.objects.get(scan=scan)
    assert not pred.out_of_distribution
    assert pred.heatmap_storage_name
    png = storage.read_bytes(pred.heatmap_storage_name)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    url = reverse("review_heatmap", args=[pred.review_item.uuid])
    ok = login(physician).get(url)
    assert ok.status_code == 200 and ok["Content-Type"] == "image/png" and ok.content == png
    assert "no-store" in ok["Cache-Control"]
    assert login(clinician).get(url).status_code == 403  # the wrong role
    assert login(other_clinician).get(url).status_code == 403
    assert login(outsider).get(url).status_code in (403, 404)
    detail = login(physician).get(reverse("review_detail", args=[pred.review_item.uuid])).content.decode()
    assert url in detail and 'id="heatmap-opacity"' in detail and 'id="heatmap-toggle"' in detail


def test_a_prediction_without_heat_map_gives_404(clinician, physician):
    mv = model_register(acting_user=None, bundle_dir=DEMO, activate=True)
    pred = make_prediction(clinician, mv, [0.3, 0.7])
    assert login(physician).get(reverse("review_heatmap", args=[pred.review_item.uuid])).status_code == 404


def test_a_batch_is_stored_in_one_go_with_one_audit_event_each(clinician, settings):
    settings.INFERENCE_BATCH_SIZE = 8
    model_register(acting_user=None, bundle_dir=DEMO, activate=True)
    scans = [make_scan(clinician, ref=f"P-{i}", color=(i * 20, 80, 120)) for i in range(4)]
    job_run(job_id=scans[0].job.id)
    preds = Prediction.objects.filter(scan__in=scans)
    assert preds.count() == 4
    assert all(p.review_item.status == "pending" and p.heatmap_storage_name for p in preds)
    assert AuditEvent.objects.filter(action="prediction.create").count() == 4
    for scan in scans:  # duplicate deliveries of every message: quiet no-ops
        job_run(job_id=scan.job.id)
    assert Prediction.objects.count() == 4 and AuditEvent.objects.filter(action="prediction.create").count() == 4


# --- commands ----------------------------------------------------------------------


def test_register_model_command_reports_label_mismatch(tmp_path):
    call_command("register_model", DEMO, "--activate")
    other = copy_bundle(tmp_path, version="9", labels=["a", "b"])
    with pytest.raises(CommandError, match="would change the task's stages"):
        call_command("register_model", str(other), "--activate")
    call_command("register_model", str(other), "--activate", "--force-labels")
    assert ModelVersion.objects.get(status="active").version == "9"


def test_predict_command_prints_top_stages_and_names_bad_files(tmp_path, capsys):
    good = settings.BASE_DIR / "samples" / "pcam-metastasis-1.jpg"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    call_command("predict", str(good), "--bundle", str(REPO_DEMO), "--json")
    out = json.loads(capsys.readouterr().out)
    top = out["results"][0]["top"]
    assert [t["stage"] for t in top] in (["metastasis", "no-metastasis"], ["no-metastasis", "metastasis"])
    assert abs(sum(t["probability"] for t in top) - 1.0) < 1e-4
    with pytest.raises(CommandError, match="1 of 2 image"):
        call_command("predict", str(good), str(bad), "--bundle", str(REPO_DEMO))
    captured = capsys.readouterr()
    assert "%" in captured.out and "broken.png: cannot read this image" in captured.err
    with pytest.raises(CommandError, match="no active model"):
        call_command("predict", str(good))
    model_register(acting_user=None, bundle_dir=DEMO, activate=True)
    call_command("predict", str(good))
    assert "pcam-metastasis-1.jpg:" in capsys.readouterr().out


def test_admin_registers_a_bundle_folder_from_the_model_directory(admin_user, clinician, tmp_path, settings):
    shutil.copytree(REPO_DEMO, settings.MODEL_DIR / "pcam")
    outside = tmp_path / "outside"
    shutil.copytree(REPO_DEMO, outside)
    url = reverse("admin:diagnostics_modelversion_register")
    client = login(admin_user)
    refused = client.post(url, {"bundle": str(outside)})
    assert refused.status_code == 400 and "in the model folder" in refused.content.decode()
    refused = client.post(url, {"bundle": "../" + outside.name})
    assert refused.status_code == 400
    assert login(clinician).post(url, {"bundle": "pcam"}).status_code in (302, 403)  # not staff: admin login
    assert not ModelVersion.objects.exists()

    ok = client.post(url, {"bundle": "pcam", "activate": "on"})
    assert ok.status_code == 302
    mv = ModelVersion.objects.get()
    assert mv.status == "active" and mv.registered_by == admin_user
    assert AuditEvent.objects.filter(action="model.register", actor=admin_user).exists()

    changelist = reverse("admin:diagnostics_modelversion_changelist")
    client.post(changelist, {"action": "retire_selected", "_selected_action": [mv.pk]})
    mv.refresh_from_db()
    assert mv.status == "retired"
    assert AuditEvent.objects.filter(action="model.retire", actor=admin_user).exists()


def test_train_model_command_stops_on_one_class_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    from tests.ml_tests.conftest import write_class_folder

    write_class_folder(tmp_path / "data" / "only", 4, (10, 20, 30), seed=1)
    out = tmp_path / "bundle"
    done = subprocess.run(
        [sys.executable, "manage.py", "train_model", "--data", str(tmp_path / "data"), "--out", str(out)]
        + ["--name", "x", "--version", "1", "--epochs", "1", "--verbose", "0"],
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "only one class folder ('only'): training needs at least two" in done.stderr
    assert not out.exists()


def test_a_versions_admin_page_names_the_calibration_the_runner_applies(admin_user, settings):
    """The BUSI bundle is vector-scaled (its temperature field is 1.0): its page says
    vector scaling with the bundle's scales, the PCam page its temperature."""
    busi = REPO_DEMO.parent / "busi-small-cnn"
    shutil.copytree(busi, settings.MODEL_DIR / "busi")
    shutil.copytree(REPO_DEMO, settings.MODEL_DIR / "pcam")
    vector = model_register(acting_user=None, bundle_dir="busi")
    temperature = model_register(acting_user=None, bundle_dir="pcam")
    client = login(admin_user)
    page = client.get(reverse("admin:diagnostics_modelversion_change", args=[vector.pk])).content.decode()
    scales = json.loads((busi / "manifest.json").read_text())["calibration"]["scale"]
    assert "vector scaling" in page and f"{scales[0]:.3f}" in page
    page = client.get(reverse("admin:diagnostics_modelversion_change", args=[temperature.pk])).content.decode()
    assert f"T = {temperature.temperature:.4f}" in page
