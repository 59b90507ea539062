"""Thin Celery tasks: ids in, call a service. Every task is idempotent."""

from __future__ import annotations

from cancerweb.celery import project_task
from diagnostics.intake.storage import orphans_sweep
from diagnostics.services.drift import drift_check_all
from diagnostics.services.integration import SEND_RESULT_TASK, result_send, results_sweep, studies_pull_all
from diagnostics.services.job_queue import INFERENCE_QUEUE, RUN_INFERENCE_TASK
from diagnostics.services.jobs import job_run, job_sweep
from diagnostics.services.notifications import reviews_notify_overdue
from diagnostics.services.shadow import SHADOW_BACKFILL_TASK, shadow_backfill_by_id
from diagnostics.services.slides import PROCESS_SLIDE_UPLOAD_TASK, slide_upload_process, slide_uploads_sweep


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


@project_task(queue="default", name=PROCESS_SLIDE_UPLOAD_TASK)
def process_slide_upload_task(*, upload_id: int) -> None:
    # Claimed by a conditional update (queued -> processing): a second delivery is a no-op.
    slide_upload_process(upload_id=upload_id)


@project_task(queue="default", name="diagnostics.sweep_slide_uploads")
def sweep_slide_uploads_task() -> None:
    # Periodic: expired unfinished uploads are deleted, lost checks sent again.
    slide_uploads_sweep()


@project_task(queue="default", name="diagnostics.sweep_storage")
def sweep_storage_task() -> int:
    # Periodic: removes objects a failed upload could not (the store was down then).
    # Idempotent: a second sweep finds nothing more to delete.
    return len(orphans_sweep())


@project_task(queue="default", name=SEND_RESULT_TASK)
def send_result_task(*, exchange_id: int) -> None:
    # Claimed under a row lock with a state guard: a second delivery, or one before the
    # exchange is due, is a quiet no-op. Retries are the sweep's, not the broker's.
    result_send(exchange_id=exchange_id)


@project_task(queue="default", name="diagnostics.sweep_results")
def sweep_results_task() -> int:
    # Periodic: sends outbound exchanges that are due (first attempt lost, or retrying).
    return results_sweep()


@project_task(queue="default", name="diagnostics.pull_studies")
def pull_studies_task() -> int:
    # Periodic: QIDO/WADO pull for accounts with pulling on; a study seen twice is one case.
    return sum(r.instances_stored for r in studies_pull_all().values())


@project_task(queue=INFERENCE_QUEUE, name=SHADOW_BACKFILL_TASK)
def shadow_backfill_task(*, model_version_id: int, last: int, acting_user_id: int | None = None) -> int:
    # On an inference worker (it has the network). Idempotent: a scan the candidate
    # already saw is skipped, so a second delivery stores nothing new.
    return shadow_backfill_by_id(model_version_id=model_version_id, last=last, acting_user_id=acting_user_id)


@project_task(queue="default", name="diagnostics.check_drift")
def check_drift_task() -> int:
    # Periodic (CELERY_BEAT_SCHEDULE, every DRIFT_INTERVAL_S). A second run adds a check
    # row but notifies nobody again: only a newly crossed threshold notifies.
    return len(drift_check_all())
