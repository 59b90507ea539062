"""Thin Celery tasks: ids in, call a service. Every task is idempotent."""

from __future__ import annotations

from cancerweb.celery import project_task
from diagnostics import services


@project_task(queue="inference", name="diagnostics.run_inference")
def run_inference_task(*, job_id: int) -> None:
    # Stale database connections are closed before every task (task_prerun in
    # cancerweb/celery.py), so a worker outlives database restarts.
    services.job_run(job_id=job_id)


@project_task(queue="default", name="diagnostics.notify_overdue_reviews")
def notify_overdue_reviews_task() -> int:
    # Periodic (CELERY_BEAT_SCHEDULE); idempotent: one reminder per item and physician.
    return services.reviews_notify_overdue()


@project_task(queue="default", name="diagnostics.sweep_jobs")
def sweep_jobs_task() -> None:
    # Sent by celery beat every JOB_SWEEP_INTERVAL_S; two sweeps at once are harmless.
    services.job_sweep()
