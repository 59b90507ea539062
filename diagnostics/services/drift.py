"""Drift monitoring of each active model version, run by a periodic task (never per
request): the inputs (image size, colour histograms, the distances of the network's
penultimate features to its training classes), the predicted-stage mix and the
confidences of its recent predictions against a reference, and its agreement with the
physicians' signed stages over the same window. A measure past its threshold notifies
every admin (in the app and by e-mail), shows on the dashboard and in /metrics.

The reference comes from the bundle when it carries one (`drift_reference` in its
manifest: colour histograms, predicted-stage mix and confidences on the validation
images, written by train_model since this check exists), stored at registration.
Otherwise it is the version's own first DRIFT_BASELINE_N predictions ("like the
start"), stored once; later checks compare only newer predictions."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Q

from accounts.models import User
from diagnostics.intake import imaging, storage
from diagnostics.ml import drift as D
from diagnostics.models import DriftCheck, DriftReference, ModelVersion, Notification, Prediction, ReviewDecision
from diagnostics.services.notifications import notify

logger = logging.getLogger(__name__)

# Colour histograms are taken on a small copy: the balance of colours does not need
# every pixel, and the check decodes up to DRIFT_WINDOW images per version.
STATS_PX = 64
MANAGE_MODELS = ("diagnostics", "change_modelversion")


def _predictions(model_version: ModelVersion) -> Any:
    return Prediction.objects.filter(model_version=model_version, scan__kind="image").select_related("scan")


def _stats(predictions: list[Prediction], labels: list[str]) -> dict[str, Any]:
    colour = np.zeros((3, D.COLOUR_BINS))
    decoded = 0
    for p in predictions:
        try:
            data = storage.read_bytes(p.scan.storage_name)
            colour += D.colour_histograms(imaging.decode_for_model(data, size=STATS_PX))
            decoded += 1
        except Exception:  # a scan that cannot be read counts in the outputs, not the colours
            logger.warning("drift: scan %s could not be read for its colour histogram", p.scan.uuid, exc_info=True)
    stages = [sum(1 for p in predictions if p.predicted_label == label) for label in labels]
    return {
        "colour": [D.proportions(row) for row in colour],
        "decoded": decoded,
        "size": D.size_histogram([(p.scan.width, p.scan.height) for p in predictions]),
        "stages": D.proportions(stages),
        "confidences": [float(p.confidence) for p in predictions],
        # The penultimate features' distances to the training classes (diagnostics/ml/ood.py),
        # where the bundle carries a feature reference.
        "feature_scores": [float(p.ood_score) for p in predictions if p.ood_score is not None],
    }


def drift_reference_ensure(*, model_version: ModelVersion) -> DriftReference | None:
    """The version's reference, made from its first DRIFT_BASELINE_N predictions once it
    has that many; None until then."""
    existing = DriftReference.objects.filter(model_version=model_version).first()
    if existing is not None:
        return existing
    first = list(_predictions(model_version).order_by("id")[: settings.DRIFT_BASELINE_N])
    if len(first) < settings.DRIFT_BASELINE_N:
        return None
    reference = DriftReference(
        model_version=model_version,
        source=DriftReference.Source.BASELINE,
        n=len(first),
        last_prediction_id=first[-1].id,
        stats=_stats(first, list(model_version.labels)),
    )
    reference.full_clean(exclude=["model_version"], validate_unique=False)
    with transaction.atomic():
        if DriftReference.objects.filter(model_version=model_version).exists():  # a concurrent check made it
            return DriftReference.objects.get(model_version=model_version)
        reference.save()
    return reference


def _measure(value: float | None, threshold: float, alarm: bool, **detail: Any) -> dict[str, Any]:
    return {"value": value, "threshold": threshold, "alarm": bool(alarm), "detail": detail}


def _agreement(window: list[Prediction]) -> tuple[int, float | None]:
    decisions = dict(
        ReviewDecision.objects.filter(
            superseded_by__isnull=True, review_item__prediction__in=[p.id for p in window]
        ).values_list("review_item__prediction_id", "stage")
    )
    signed = [p for p in window if p.id in decisions]
    if not signed:
        return 0, None
    return len(signed), sum(1 for p in signed if decisions[p.id] == p.predicted_label) / len(signed)


def drift_check(*, model_version: ModelVersion) -> DriftCheck | None:
    """Compare the version's last DRIFT_WINDOW predictions after its reference with the
    reference. None while the reference or the window is still too small."""
    reference = drift_reference_ensure(model_version=model_version)
    if reference is None:
        return None
    window = list(
        _predictions(model_version).filter(id__gt=reference.last_prediction_id).order_by("-id")[: settings.DRIFT_WINDOW]
    )
    if len(window) < settings.DRIFT_MIN_WINDOW:
        return None
    labels = list(model_version.labels)
    ref, cur = reference.stats, _stats(window, labels)
    psi_limit = settings.DRIFT_PSI_THRESHOLD
    channel_psi = [D.psi(r, c) for r, c in zip(ref["colour"], cur["colour"], strict=True)]
    colour = max(channel_psi) if cur["decoded"] else None
    # A bundle's reference has no image sizes (the training arrays were resized).
    size = D.psi(ref["size"], cur["size"]) if ref.get("size") else None
    stages = D.psi(ref["stages"], cur["stages"])
    ks, ks_p = D.ks_p_value(ref["confidences"], cur["confidences"])
    # The network's penultimate features: their distances to the training classes, now
    # against the reference's (the bundle's held-out images, or the first predictions).
    ref_features, cur_features = ref.get("feature_scores") or [], cur["feature_scores"]
    features_ks, features_p = (None, None)
    if len(ref_features) >= settings.DRIFT_MIN_WINDOW and len(cur_features) >= settings.DRIFT_MIN_WINDOW:
        features_ks, features_p = D.ks_p_value(ref_features, cur_features)
    n_signed, agreement = _agreement(window)
    enough_signed = n_signed >= settings.DRIFT_MIN_SIGNED and agreement is not None
    measures = {
        "colour_psi": _measure(
            colour,
            psi_limit,
            colour is not None and colour > psi_limit,
            red=channel_psi[0],
            green=channel_psi[1],
            blue=channel_psi[2],
        ),  # fmt: skip
        "image_size_psi": _measure(size, psi_limit, size is not None and size > psi_limit),
        "stage_psi": _measure(
            stages, psi_limit, stages > psi_limit, window=dict(zip(labels, cur["stages"], strict=True))
        ),
        "confidence_ks_p": _measure(ks_p, settings.DRIFT_KS_P, ks_p < settings.DRIFT_KS_P, statistic=ks),
        "feature_distance_ks_p": _measure(
            features_p,
            settings.DRIFT_KS_P,
            features_p is not None and features_p < settings.DRIFT_KS_P,
            statistic=features_ks,
            reference_median=float(np.median(ref_features)) if ref_features else None,
            window_median=float(np.median(cur_features)) if cur_features else None,
        ),
        "agreement": _measure(
            agreement,
            settings.DRIFT_MIN_AGREEMENT,
            enough_signed and agreement is not None and agreement < settings.DRIFT_MIN_AGREEMENT,
            signed=n_signed,
            min_signed=settings.DRIFT_MIN_SIGNED,
        ),
    }
    previous = DriftCheck.objects.filter(model_version=model_version).first()
    check = DriftCheck(
        model_version=model_version,
        window=len(window),
        measures=measures,
        alarm=any(m["alarm"] for m in measures.values()),
    )
    with transaction.atomic():
        check.save()
        was = {name for name, m in (previous.measures if previous else {}).items() if m.get("alarm")}
        new = [name for name, m in measures.items() if m["alarm"] and name not in was]
        if new:
            _notify_admins(model_version=model_version, measures=new)
    return check


def _notify_admins(*, model_version: ModelVersion, measures: list[str]) -> None:
    """Once per measure that newly crossed its threshold (a lasting drift does not mail
    every hour). No patient data: a model and measure names."""
    from django.urls import reverse

    app_label, codename = MANAGE_MODELS
    admins = (
        User.objects.filter(is_active=True)
        .filter(
            Q(groups__permissions__codename=codename, groups__permissions__content_type__app_label=app_label)
            | Q(user_permissions__codename=codename, user_permissions__content_type__app_label=app_label)
        )
        .distinct()
    )
    names = ", ".join(m.replace("_", " ") for m in measures)
    for admin in admins:
        notify(
            user=admin,
            kind=Notification.Kind.DRIFT_ALARM,
            message=f"Model {model_version} drifted from its reference: {names}."[:300],
            link=reverse("dashboard"),
            review_item=None,
        )


def drift_check_all() -> list[DriftCheck]:
    """The periodic task's body: one check per active version."""
    checks = []
    for model_version in ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).order_by("id"):
        check = drift_check(model_version=model_version)
        if check is not None:
            checks.append(check)
    return checks
