"""Aggregates for /health/ and /metrics: job counts, queue age, worker heartbeats. No
clinical data, so not scoped to a user."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Min
from django.utils import timezone

from diagnostics.models import InferenceJob, WorkerHeartbeat


def job_counts() -> dict[str, int]:
    counts = dict.fromkeys(InferenceJob.Status.values, 0)
    for row in InferenceJob.objects.values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


def oldest_queued_age_s() -> float:
    oldest = InferenceJob.objects.filter(status=InferenceJob.Status.QUEUED).aggregate(t=Min("created_at"))["t"]
    return max(0.0, (timezone.now() - oldest).total_seconds()) if oldest else 0.0


def stuck_running_count() -> int:
    """Jobs still `running` past the running deadline: their worker was lost or stuck
    (e.g. on a locked database), and no sweeper has put them back in the queue."""
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_RUNNING_DEADLINE_S)
    return InferenceJob.objects.filter(status=InferenceJob.Status.RUNNING, started_at__lt=cutoff).count()


def latest_heartbeat_age_s() -> float | None:
    latest = WorkerHeartbeat.objects.order_by("-last_seen").values_list("last_seen", flat=True).first()
    return max(0.0, (timezone.now() - latest).total_seconds()) if latest else None


def live_workers(*, within_s: float) -> list[dict[str, Any]]:
    """Workers with a heartbeat in the last `within_s` seconds and where their network
    runs (empty device: its pool has not loaded the models yet)."""
    since = timezone.now() - timedelta(seconds=within_s)
    rows = WorkerHeartbeat.objects.filter(last_seen__gte=since).order_by("hostname")
    return [dict(row) for row in rows.values("hostname", "device", "backend", "precision")]
