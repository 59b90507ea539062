"""Dashboards: agreement of each model version with the signed stages, queue age and
time to sign-off."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from accounts.roles import REVIEW_PERMISSION
from diagnostics.models import (
    ModelVersion,
    ReviewDecision,
    ReviewItem,
)


@dataclass
class StageMetrics:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class ModelAgreement:
    """Agreement of one model version with the physicians' signed stages, the
    physician's stage taken as the truth (rows of the confusion matrix)."""

    model_version: ModelVersion
    labels: list[str]
    n: int
    accuracy: float
    stages: list[StageMetrics]
    confusion: list[list[int]]
    trend: list[tuple[date, int, float]] = field(default_factory=list)  # day, n, accuracy


@dataclass
class QueueStats:
    pending: int
    oldest_minutes: float | None
    median_age_minutes: float | None
    signed: int
    median_signoff_minutes: float | None
    mean_signoff_minutes: float | None


def _require_dashboard(user: User) -> None:
    if not (user.has_perm(REVIEW_PERMISSION) or user.has_perm("diagnostics.view_modelversion")):
        raise PermissionDenied("dashboards are for physicians and admins")


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _current_decisions() -> QuerySet[ReviewDecision]:
    # A correction replaces the decision it supersedes: only the latest counts.
    return ReviewDecision.objects.filter(superseded_by__isnull=True)


def agreement_by_model(*, user: User) -> list[ModelAgreement]:
    """Per model version: accuracy, per-stage precision / recall / F1 and the confusion
    matrix of the model's predicted stage against the physician's signed stage, plus
    the daily trend of accuracy by signing day."""
    import numpy as np

    from diagnostics.ml import metrics

    _require_dashboard(user)
    rows = _current_decisions().values_list(
        "review_item__prediction__model_version_id",
        "review_item__prediction__predicted_index",
        "stage",
        "signed_at",
    )
    by_model: dict[int, list[tuple[int, str, datetime]]] = {}
    for model_id, predicted, stage, signed_at in rows:
        by_model.setdefault(model_id, []).append((predicted, stage, signed_at))
    versions = {m.id: m for m in ModelVersion.objects.filter(id__in=by_model)}
    result = []
    for model_id in sorted(by_model, key=lambda i: (versions[i].registered_at, i)):
        mv = versions[model_id]
        labels = list(mv.labels)
        pairs = [(labels.index(stage), predicted, signed_at) for predicted, stage, signed_at in by_model[model_id]]
        y_true = np.array([t for t, _, _ in pairs])
        y_pred = np.array([p for _, p, _ in pairs])
        prf = metrics.per_class_prf(y_true, y_pred, len(labels))
        stages = [
            StageMetrics(
                label=label,
                precision=float(prf["precision"][i]),
                recall=float(prf["recall"][i]),
                f1=float(prf["f1"][i]),
                support=int(prf["support"][i]),
            )
            for i, label in enumerate(labels)
        ]
        days: dict[date, list[bool]] = {}
        for t, p, signed_at in pairs:
            days.setdefault(timezone.localdate(signed_at), []).append(t == p)
        trend = [(day, len(hits), sum(hits) / len(hits)) for day, hits in sorted(days.items())]
        result.append(
            ModelAgreement(
                model_version=mv,
                labels=labels,
                n=len(pairs),
                accuracy=metrics.accuracy(y_true, y_pred),
                stages=stages,
                confusion=metrics.confusion_matrix(y_true, y_pred, len(labels)).tolist(),
                trend=trend,
            )
        )
    return result


def queue_stats(*, user: User) -> QueueStats:
    """Queue age of pending items and time from queue entry to first sign-off."""
    _require_dashboard(user)
    now = timezone.now()
    ages = [
        (now - created).total_seconds() / 60
        for created in ReviewItem.objects.filter(status=ReviewItem.Status.PENDING).values_list("created_at", flat=True)
    ]
    first_signed: dict[int, tuple[datetime, datetime]] = {}
    for item_id, created, signed_at in ReviewDecision.objects.filter(supersedes__isnull=True).values_list(
        "review_item_id", "review_item__created_at", "signed_at"
    ):
        if item_id not in first_signed or signed_at < first_signed[item_id][1]:
            first_signed[item_id] = (created, signed_at)
    signoff = [(signed - created) / timedelta(minutes=1) for created, signed in first_signed.values()]
    return QueueStats(
        pending=len(ages),
        oldest_minutes=max(ages) if ages else None,
        median_age_minutes=_median(ages),
        signed=len(signoff),
        median_signoff_minutes=_median(signoff),
        mean_signoff_minutes=sum(signoff) / len(signoff) if signoff else None,
    )
