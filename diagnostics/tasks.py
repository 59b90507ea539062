"""Thin Celery tasks: ids in, call a service. Every task is idempotent."""

from __future__ import annotations

from cancerweb.celery import project_task
from diagnostics.intake.storage import orphans_sweep
from diagnostics.services.jobs import INFERENCE_QUEUE, RUN_INFERENCE_TASK, job_run, job_sweep
from diagnostics.services.notifications import reviews_notify_overdue


@project_task(queue=INFERENCE_QUEUE, name=RUN_INFERENCE_TASK)
def run_inference_task(*, job_id: int) -> None:
    # Stale database connections are closed before every task (task_prerun in
    # diagnostics/worker.py), so a worker outlives database restarts.
    job_run(job_id=job_id)


@project_task(queue="default", name="diagnostics.notify_overdue_reviews")
def notify_overdue_reviews_task() -> int:
    # Periodic (CELERY_BEAT_SCHEDULE); idempotent: one reminder per item and physician.
    return reviews_notify_overdue()


@project_task(queue="default", name="diagnostics.sweep_jobs")
def sweep_jobs_task() -> None:
    # Sent by celery beat every JOB_SWEEP_INTERVAL_S; two sweeps at once are harmless.
    job_sweep()


@project_task(queue="default", name="diagnostics.sweep_storage")
def sweep_storage_task() -> int:
    # Periodic: removes objects a failed upload could not (the store was down then).
    # Idempotent: a second sweep finds nothing more to delete.
    return len(orphans_sweep())
