"""The shadow comparison: a candidate against the predictions physicians were shown, on
the same signed cases. Admins only (they manage models and see no case: the page shows
aggregates, never a case or a scan)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.core.exceptions import PermissionDenied

from accounts.models import User
from diagnostics.models import ModelVersion, Prediction, ReviewDecision, ShadowPrediction

MANAGE_MODELS = "diagnostics.change_modelversion"


def shadow_comparison_data(*, model_version: ModelVersion) -> dict[str, Any] | None:
    """Every scan with a shadow prediction of ``model_version``, a clinical prediction
    with the same ordered labels and a current signed decision: the candidate's and the
    shown model's probabilities against the signed stage. None when there is no such
    case yet."""
    from diagnostics.ml.compare import compare_paired

    labels = list(model_version.labels)
    shadows = {s.scan_id: s for s in ShadowPrediction.objects.filter(model_version=model_version).order_by("scan_id")}
    if not shadows:
        return None
    predictions = {
        p.scan_id: p
        for p in Prediction.objects.filter(scan_id__in=shadows).select_related("model_version", "review_item")
    }
    decisions = {
        d.review_item.prediction.scan_id: d
        for d in ReviewDecision.objects.filter(
            superseded_by__isnull=True, review_item__prediction__scan_id__in=shadows
        ).select_related("review_item__prediction")
    }
    y, active, candidate = [], [], []
    shown_versions: Counter[str] = Counter()
    # How often each would have withheld its answer (the input outside what it knows).
    # The figures above still count every case: what each model said, withheld or not.
    withheld = {"active": 0, "candidate": 0}
    for scan_id, shadow in shadows.items():
        prediction, decision = predictions.get(scan_id), decisions.get(scan_id)
        if prediction is None or decision is None or list(prediction.labels) != labels:
            continue
        if decision.stage not in labels:
            continue
        y.append(labels.index(decision.stage))
        active.append(prediction.probabilities)
        candidate.append(shadow.probabilities)
        shown_versions[str(prediction.model_version)] += 1
        withheld["active"] += int(prediction.out_of_distribution)
        withheld["candidate"] += int(shadow.out_of_distribution)
    if not y:
        return None
    result = compare_paired(y, active, candidate, labels)
    result["shown_versions"] = dict(shown_versions)
    result["withheld"] = withheld
    result["shadow_predictions"] = len(shadows)
    result["candidate"]["version"] = str(model_version)
    return result


def shadow_comparison(*, user: User, model_version: ModelVersion) -> dict[str, Any] | None:
    if not user.has_perm(MANAGE_MODELS):
        raise PermissionDenied("the shadow comparison is for admins")
    return shadow_comparison_data(model_version=model_version)


def comparison_summary(comparison: dict[str, Any] | None) -> dict[str, Any] | None:
    """The figures an activation's audit event records."""
    if comparison is None:
        return None
    auc = comparison["auc_difference"]
    return {
        "n": comparison["n"],
        "accuracy_active": comparison["active"]["accuracy"],
        "accuracy_candidate": comparison["candidate"]["accuracy"],
        "mcnemar_p": comparison["mcnemar"]["p_value"],
        "auc_active": comparison["active"]["auc"],
        "auc_candidate": comparison["candidate"]["auc"],
        "auc_difference": None if auc is None else auc["difference"],
        "auc_ci": None if auc is None else [auc["ci_low"], auc["ci_high"]],
        "auc_p": None if auc is None else auc["p_value"],
        "ece_active": comparison["active"]["ece"],
        "ece_candidate": comparison["candidate"]["ece"],
        "shown_versions": comparison["shown_versions"],
        "withheld": comparison.get("withheld"),
    }
