"""export_training_set: the signed stages of chosen units and dates, as the folders and
dataset.json that train_model reads, with a manifest and an audit event."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from accounts.models import AuditEvent
from diagnostics.ml.datasets import load_split, resolve_layout
from diagnostics.models import ReviewDecision
from tests.factories import ReviewDecisionFactory, make_prediction

pytestmark = pytest.mark.django_db


def _signed(user, model, probabilities, *, color, stage="", outcome="confirmed", physician=None):  # type: ignore[no-untyped-def]
    prediction = make_prediction(user, model, probabilities, color=color, ref=f"PSN-{color[0]}")
    return ReviewDecisionFactory(
        review_item=prediction.review_item,
        outcome=outcome,
        stage=stage or prediction.predicted_label,
        reason="" if outcome == "confirmed" else "tumour cells seen",
        physician=physician,
    )


def test_round_trip_into_the_training_reader(  # type: ignore[no-untyped-def]
    care_unit, clinician, physician, other_unit_clinician, active_model, tmp_path
):
    neg, pos = active_model.labels
    kept = [
        _signed(clinician, active_model, [0.9, 0.1], color=(10, 0, 0), physician=physician),
        _signed(clinician, active_model, [0.8, 0.2], color=(20, 0, 0), physician=physician),
        _signed(clinician, active_model, [0.2, 0.8], color=(30, 0, 0), physician=physician),
    ]
    # A rejection, then a correction: the correction's stage is the label.
    first = _signed(clinician, active_model, [0.7, 0.3], color=(40, 0, 0), physician=physician)
    correction = ReviewDecisionFactory(
        review_item=first.review_item,
        outcome="rejected",
        stage=pos,
        reason="second look: metastasis",
        physician=physician,
        supersedes=first,
    )
    kept.append(correction)
    # Another unit's signed case is not exported.
    _signed(other_unit_clinician, active_model, [0.1, 0.9], color=(50, 0, 0))
    # Nor one signed before --since.
    old = _signed(clinician, active_model, [0.6, 0.4], color=(60, 0, 0), physician=physician)
    ReviewDecision.objects.filter(pk=old.pk).update(signed_at=timezone.now() - timedelta(days=10))

    today = timezone.localdate()
    out = tmp_path / "set"
    call_command(
        "export_training_set",
        "--units", care_unit.name,
        "--since", str(today - timedelta(days=1)),
        "--until", str(today),
        "--out", str(out),
    )  # fmt: skip

    manifest = json.loads((out / "manifest.json").read_text())
    assert {e["decision"] for e in manifest["decisions"]} == {str(d.uuid) for d in kept}
    assert manifest["counts"] == {neg: 2, pos: 2}
    assert str(first.uuid) not in {e["decision"] for e in manifest["decisions"]}
    # File names are public scan ids, not the uploaded names.
    assert all(e["file"] == f"{e['stage']}/{e['scan']}.png" for e in manifest["decisions"])

    layout = resolve_layout(data=out, train_dir=None, valid_dir=None, valid_fraction=0.5, seed=1)
    assert layout.labels == [neg, pos]
    assert layout.label_order_source == "dataset.json"
    everything = {label: layout.train_files[label] + layout.valid_files[label] for label in layout.labels}
    split = load_split(everything, layout.labels, 32, where="export")
    assert split.images.shape == (4, 32, 32, 3)
    assert sorted(np.bincount(split.labels).tolist()) == [2, 2]
    by_scan = {e["scan"]: e["stage"] for e in manifest["decisions"]}
    correction_scan = str(correction.review_item.prediction.scan.uuid)
    assert by_scan[correction_scan] == pos
    assert (out / pos / f"{correction_scan}.png").is_file()

    event = AuditEvent.objects.get(action="training_set.export")
    assert event.data["manifest_sha256"] == event.object_id
    assert sorted(event.data["decisions"]) == sorted(str(d.uuid) for d in kept)


def test_refusals_leave_nothing(care_unit, clinician, tmp_path):
    out = tmp_path / "set"
    with pytest.raises(CommandError, match="no care unit named Nowhere"):
        call_command("export_training_set", "--units", "Nowhere", "--since", "2026-01-01", "--until", "2026-01-02",
                     "--out", str(out))  # fmt: skip
    with pytest.raises(CommandError, match="no signed image decisions"):
        call_command("export_training_set", "--units", care_unit.name,
                     "--since", "2026-01-01", "--until", "2026-01-02", "--out", str(out))  # fmt: skip
    assert list(tmp_path.iterdir()) == []
    assert not AuditEvent.objects.filter(action="training_set.export").exists()
