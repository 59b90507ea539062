"""Dashboards: agreement of each model version with the signed stages, queue age and
time to sign-off."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
from django.core.exceptions import PermissionDenied
from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Min, Q, QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import User
from accounts.roles import REVIEW_PERMISSION
from diagnostics.ml import metrics
from diagnostics.models import Case, ModelVersion, ReviewDecision, ReviewItem
from diagnostics.selectors.cases import cases_for_user

# Fewer signed items than this and the dashboard marks the figures as a small sample.
SMALL_SAMPLE = 30


@dataclass
class StageMetrics:
    """Per-stage agreement. None where the figure is undefined, not zero: precision when
    the model never predicted the stage, recall when no item was signed as the stage,
    F1 when either of them is undefined."""

    label: str
    precision: float | None
    recall: float | None
    f1: float | None
    support: int
    predicted: int = 0  # items the model predicted as this stage

    @property
    def figures(self) -> tuple[float | None, float | None, float | None]:
        return self.precision, self.recall, self.f1


@dataclass
class ModelAgreement:
    """Agreement of one model version with the physicians' signed stages, the
    physician's stage taken as the truth (rows of the confusion matrix)."""

    model_version: ModelVersion
    labels: list[str]
    n: int
    accuracy: float | None  # None with no scored item
    stages: list[StageMetrics]
    confusion: list[list[int]]
    trend: list[tuple[date, int, float]] = field(default_factory=list)  # day, n, accuracy
    accuracy_ci: tuple[float, float] | None = None  # Wilson 95 % interval

    @property
    def small_sample(self) -> bool:
        return self.n < SMALL_SAMPLE


@dataclass
class QueueStats:
    pending: int
    oldest_minutes: float | None
    median_age_minutes: float | None
    signed: int
    median_signoff_minutes: float | None
    mean_signoff_minutes: float | None


def _dashboard_cases(user: User) -> QuerySet[Case]:
    """The cases whose figures a user's dashboards count.

    Physicians: the cases of their own care units (`cases_for_user`), so a physician
    of one unit never sees another unit's queue or agreement. Admins, who manage the
    installation's models and see no clinical record: every unit, and only as
    aggregates (counts, rates, ages), never a case."""
    if user.has_perm(REVIEW_PERMISSION):
        return cases_for_user(user=user)
    if user.has_perm("diagnostics.view_modelversion"):
        return Case.objects.all()
    raise PermissionDenied("dashboards are for physicians and admins")


def _current_decisions(cases: QuerySet[Case]) -> QuerySet[ReviewDecision]:
    # A correction replaces the decision it supersedes: only the latest counts.
    return ReviewDecision.objects.filter(superseded_by__isnull=True, review_item__prediction__scan__case__in=cases)


MODEL = "review_item__prediction__model_version_id"


def agreement_by_model(*, user: User) -> list[ModelAgreement]:
    """Per model version: accuracy, per-stage precision / recall / F1 and the confusion
    matrix of the model's predicted stage against the physician's signed stage, plus
    the daily trend of accuracy by signing day. Counted in the database: one grouped
    query for the matrix cells and one for the days, whatever the number of cases."""
    decisions = _current_decisions(_dashboard_cases(user))
    cells = decisions.values_list(MODEL, "review_item__prediction__predicted_index", "stage").annotate(n=Count("id"))
    by_model: dict[int, list[tuple[int, str, int]]] = {}
    for model_id, predicted, stage, n in cells:
        by_model.setdefault(model_id, []).append((predicted, stage, n))
    agreed = Q(stage=F("review_item__prediction__predicted_label"))
    days = (
        decisions.annotate(day=TruncDate("signed_at"))
        .values_list(MODEL, "day")
        .annotate(n=Count("id"), hits=Count("id", filter=agreed))
        .order_by(MODEL, "day")
    )
    trends: dict[int, list[tuple[date, int, float]]] = {}
    for model_id, day, n, hits in days:
        trends.setdefault(model_id, []).append((day, n, hits / n))
    versions = {m.id: m for m in ModelVersion.objects.filter(id__in=by_model)}
    result = []
    for model_id in sorted(by_model, key=lambda i: (versions[i].registered_at, i)):
        mv = versions[model_id]
        labels = list(mv.labels)
        confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
        for predicted, stage, n in by_model[model_id]:
            if stage in labels:  # a stage outside the version's labels cannot be scored
                confusion[labels.index(stage), predicted] += n
        stages = [_stage_metrics(label, confusion, i) for i, label in enumerate(labels)]
        total = int(confusion.sum())
        hits = int(np.trace(confusion))
        result.append(
            ModelAgreement(
                model_version=mv,
                labels=labels,
                n=total,
                accuracy=hits / total if total else None,
                stages=stages,
                confusion=confusion.tolist(),
                trend=trends.get(model_id, []),
                accuracy_ci=metrics.wilson_interval(hits, total),
            )
        )
    return result


def _stage_metrics(label: str, confusion: Any, i: int) -> StageMetrics:
    tp = int(confusion[i, i])
    predicted = int(confusion[:, i].sum())
    support = int(confusion[i, :].sum())
    precision = tp / predicted if predicted else None
    recall = tp / support if support else None
    f1: float | None = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return StageMetrics(label=label, precision=precision, recall=recall, f1=f1, support=support, predicted=predicted)


def _median_minutes(rows: QuerySet[Any], field: str, count: int) -> float | None:
    """The median of an ordered column, read from the database with two offsets (works
    on PostgreSQL and on the demo's SQLite, which has no percentile function)."""
    if not count:
        return None
    ordered = rows.order_by(field).values_list(field, flat=True)
    middle = [ordered[(count - 1) // 2], ordered[count // 2]]
    return sum(_minutes(v) for v in middle) / 2


def _minutes(value: timedelta | datetime) -> float:
    if isinstance(value, datetime):
        value = timezone.now() - value
    return value / timedelta(minutes=1)


def queue_stats(*, user: User) -> QueueStats:
    """Queue age of pending items and time from queue entry to first sign-off, in the
    user's dashboard scope, aggregated in the database."""
    cases = _dashboard_cases(user)
    pending = ReviewItem.objects.filter(status=ReviewItem.Status.PENDING, prediction__scan__case__in=cases)
    waiting = pending.aggregate(n=Count("id"), oldest=Min("created_at"))
    # The original decision of each item (corrections supersede it): its first sign-off.
    first = ReviewDecision.objects.filter(
        supersedes__isnull=True, review_item__prediction__scan__case__in=cases
    ).annotate(took=ExpressionWrapper(F("signed_at") - F("review_item__created_at"), output_field=DurationField()))
    signed = first.aggregate(n=Count("id"), mean=Avg("took"))
    return QueueStats(
        pending=waiting["n"],
        oldest_minutes=_minutes(waiting["oldest"]) if waiting["oldest"] else None,
        median_age_minutes=_median_minutes(pending, "created_at", waiting["n"]),
        signed=signed["n"],
        median_signoff_minutes=_median_minutes(first, "took", signed["n"]),
        mean_signoff_minutes=_minutes(signed["mean"]) if signed["mean"] is not None else None,
    )


@dataclass
class Dashboard:
    agreements: list[ModelAgreement]
    queue: QueueStats


def dashboard_get(*, user: User) -> Dashboard:
    """What the dashboard page and its CSV export show, in the user's dashboard scope."""
    return Dashboard(agreements=agreement_by_model(user=user), queue=queue_stats(user=user))
