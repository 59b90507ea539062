"""Thin Celery tasks: ids in, call a service. Every task is idempotent."""

from __future__ import annotations

from django.db import close_old_connections

from cancerweb.celery import project_task
from diagnostics import services


@project_task(queue="inference", name="diagnostics.run_inference")
def run_inference_task(*, job_id: int) -> None:
    # A worker outlives database restarts: drop connections that went stale.
    close_old_connections()
    services.job_run(job_id=job_id)


@project_task(queue="default", name="diagnostics.notify_overdue_reviews")
def notify_overdue_reviews_task() -> int:
    # Periodic (CELERY_BEAT_SCHEDULE); idempotent: one reminder per item and physician.
    close_old_connections()
    return services.reviews_notify_overdue()
