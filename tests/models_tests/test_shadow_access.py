"""Who reaches the shadow comparison page, and which versions can become candidates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.urls import reverse

from accounts.models import AuditEvent
from diagnostics.models import ModelVersion
from diagnostics.services.model_registry import model_activate, model_make_candidate, model_register
from tests.helpers import login
from tests.models_tests.candidate_bundle import make_candidate_bundle

pytestmark = pytest.mark.django_db
REPO_DEMO = Path(__file__).resolve().parents[2] / "models" / "demo-pcam"


@pytest.fixture
def candidate(settings, tmp_path):  # type: ignore[no-untyped-def]
    settings.MODEL_DIR = tmp_path / "models"
    shutil.copytree(REPO_DEMO, settings.MODEL_DIR / "demo-pcam")
    make_candidate_bundle(settings.MODEL_DIR / "pcam-candidate")
    model_register(acting_user=None, bundle_dir="demo-pcam", activate=True)
    return model_register(acting_user=None, bundle_dir="pcam-candidate", candidate=True)


@pytest.mark.parametrize(
    ("persona", "status"),
    [("anonymous", 302), ("outsider", 302), ("clinician", 302), ("physician", 302), ("admin_user", 200)],
)
def test_only_model_managers_open_the_comparison(request, candidate, persona, status):  # type: ignore[no-untyped-def]
    from django.test import Client

    client = Client() if persona == "anonymous" else login(request.getfixturevalue(persona))
    url = reverse("admin:diagnostics_modelversion_shadow", args=[candidate.pk])
    response = client.get(url)
    assert response.status_code == status
    if status == 302:
        assert "/admin/login/" in response["Location"]  # Django admin's staff check
    else:
        assert "No signed case has a prediction of this candidate yet" in response.content.decode()
    missing = reverse("admin:diagnostics_modelversion_shadow", args=[candidate.pk + 999])
    assert client.get(missing).status_code == (404 if status == 200 else 302)


def test_candidate_rules_and_activation_audit(candidate, admin_user, tmp_path):  # type: ignore[no-untyped-def]
    assert candidate.status == ModelVersion.Status.CANDIDATE
    active = ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)
    with pytest.raises(ValidationError, match="active version already"):
        model_make_candidate(acting_user=admin_user, model_version=active)
    other = Path(settings.MODEL_DIR) / "other-labels"
    shutil.copytree(REPO_DEMO, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest.update(name="x", version="9", labels=["benign", "malignant"])
    (other / "manifest.json").write_text(json.dumps(manifest))
    relabelled = model_register(acting_user=None, bundle_dir="other-labels")
    with pytest.raises(ValidationError, match="needs the same stages"):
        model_make_candidate(acting_user=admin_user, model_version=relabelled)
    # Activated with no shadow prediction yet: the audit event says so.
    model_activate(acting_user=admin_user, model_version=candidate)
    event = AuditEvent.objects.get(action="model.activate", object_id=str(candidate.uuid))
    assert event.data["was_candidate"] is True and event.data["shadow_comparison"] is None


def test_shadow_evaluate_command(candidate, capsys):  # type: ignore[no-untyped-def]
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="names no candidate version"):
        call_command("shadow_evaluate", "no-such-version")
    with pytest.raises(CommandError, match="positive number"):
        call_command("shadow_evaluate", candidate.version, "--last", "0")
    call_command("shadow_evaluate", f"{candidate.name} {candidate.version}", "--last", "5")
    out = capsys.readouterr().out
    assert "0 new shadow prediction(s)" in out and "no signed case to compare on yet" in out
    assert AuditEvent.objects.filter(action="shadow.backfill", object_id=str(candidate.uuid)).exists()


def test_a_shadow_prediction_carries_the_candidates_out_of_distribution_flag(candidate, clinician):  # type: ignore[no-untyped-def]
    """The candidate's answer on an input outside what it knows would have been withheld;
    its shadow row says so, by the clinical worker's rule, so the comparison can count it."""
    from diagnostics.services.shadow import shadow_predict
    from tests.factories import make_scan

    blank = make_scan(clinician, ref="S-BLANK")  # one flat colour: nearly blank for the model
    patch = make_scan(
        clinician,
        ref="S-PATCH",
        data=(REPO_DEMO.parents[1] / "samples" / "pcam-metastasis-2.jpg").read_bytes(),
        name="p.jpg",
    )
    rows = {
        row.scan_id: row for row in shadow_predict(model_version=candidate, scans=[blank, patch], source="backfill")
    }
    assert rows[blank.id].out_of_distribution and "nearly_blank" in rows[blank.id].ood_reasons
    assert not rows[patch.id].out_of_distribution and rows[patch.id].ood_reasons == []


def test_the_workers_batch_feeds_the_candidate_in_shadow(candidate, clinician):  # type: ignore[no-untyped-def]
    """A clinical batch's scans reach the task's candidate once their predictions are
    stored: one live shadow row per scan, the clinical prediction untouched."""
    from diagnostics.models import InferenceJob, Prediction, ShadowPrediction
    from diagnostics.services.jobs import job_run
    from tests.factories import make_scan

    scans = [make_scan(clinician, ref=f"S-{i}", color=(200, 80 + 40 * i, 120)) for i in range(2)]
    for scan in scans:
        job_run(job_id=scan.job.id)
    assert all(InferenceJob.objects.get(pk=s.job.pk).status == InferenceJob.Status.SUCCEEDED for s in scans)
    live = ShadowPrediction.objects.filter(model_version=candidate, source=ShadowPrediction.Source.LIVE)
    assert sorted(live.values_list("scan_id", flat=True)) == sorted(s.id for s in scans)
    active = ModelVersion.objects.get(status=ModelVersion.Status.ACTIVE)
    assert set(Prediction.objects.filter(job__scan__in=scans).values_list("model_version_id", flat=True)) == {active.id}


def test_the_shipped_pcam_candidate_registers_beside_the_demo_model(settings, tmp_path):  # type: ignore[no-untyped-def]
    """models/pcam-small-cnn-2.1.0 (better than demo-pcam on the selection split, not yet
    judged on local cases) registers as a candidate of the same task: its file matches
    its manifest, its stages are the active version's, and it records its training."""
    settings.MODEL_DIR = tmp_path / "models"
    for name in ("demo-pcam", "pcam-small-cnn-2.1.0"):
        shutil.copytree(REPO_DEMO.parent / name, settings.MODEL_DIR / name)
    active = model_register(acting_user=None, bundle_dir="demo-pcam", activate=True)
    candidate = model_register(acting_user=None, bundle_dir="pcam-small-cnn-2.1.0", candidate=True)
    assert candidate.status == ModelVersion.Status.CANDIDATE and candidate.version == "2.1.0"
    assert candidate.task == active.task and list(candidate.labels) == list(active.labels)
    manifest = json.loads((settings.MODEL_DIR / "pcam-small-cnn-2.1.0" / "manifest.json").read_text())
    assert manifest["metrics"]["training"]["options"]["weight_decay"] == 0.05
    assert (
        manifest["metrics"]["select"]["roc_auc"]
        > json.loads((REPO_DEMO / "manifest.json").read_text())["metrics"]["select"]["roc_auc"]
    )
