"""Inference jobs: claim them in a worker, run the network on a batch, store the
predictions once, sweep lost jobs back, retry failed ones. Queueing and failing a job
live in services/job_queue.py, shared with the slide path (services/slides.py)."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.audit import audit_record
from accounts.models import User
from accounts.roles import UPLOAD_PERMISSION
from diagnostics.intake import imaging, storage
from diagnostics.models import (
    Case,
    InferenceJob,
    ModelVersion,
    Prediction,
    ReviewItem,
    Scan,
    WorkerHeartbeat,
)
from diagnostics.selectors.cases import cases_for_user
from diagnostics.services.job_queue import JobError, active_model_for_task, job_enqueue, job_fail, job_send
from diagnostics.services.shadow import shadow_after_batch
from diagnostics.services.slides import slide_job_process
from diagnostics.services.worklists import worklists_changed

logger = logging.getLogger(__name__)


def _process_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reclaim_from_dead_process(job_id: int, me: str, now: datetime) -> int:
    """A redelivered message for a job whose claimer died on this host (a pool child
    killed mid-inference): take the job over now instead of waiting for the
    sweeper's running deadline. Only when the claimer is provably gone: same host,
    its pid no longer exists. Anything less certain is left to the sweeper."""
    row = InferenceJob.objects.filter(id=job_id, status=InferenceJob.Status.RUNNING).values("claimed_by", "attempts")
    job = row.first()
    if job is None or job["attempts"] >= settings.JOB_MAX_ATTEMPTS:
        return 0
    host, _, pid = job["claimed_by"].rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or f"{host}:{pid}" == me or _process_alive(int(pid)):
        return 0
    # Conditional on the same dead claimer, so two redeliveries cannot both take it.
    return InferenceJob.objects.filter(
        id=job_id, status=InferenceJob.Status.RUNNING, claimed_by=job["claimed_by"]
    ).update(attempts=F("attempts") + 1, started_at=now, updated_at=now, claimed_by=me)


def job_run(*, job_id: int) -> None:
    """Run an inference job, and with it up to INFERENCE_BATCH_SIZE - 1 other waiting
    jobs of the same task as one batch. Safe to call twice: only a caller that claims a
    job (queued -> running by a conditional update) works on it, so a duplicate
    delivery, or the message of a job another worker already took into its batch, is a
    quiet no-op. A job whose claimer died on this host is taken over at once."""
    now = timezone.now()
    me = _process_identity()
    if not _job_claim(job_id, me) and not _reclaim_from_dead_process(job_id, me, now):
        return
    if Scan.objects.filter(job__id=job_id, kind=Scan.Kind.SLIDE).exists():
        # A whole slide is thousands of tiles: it is a batch of its own (services/slides.py).
        slide_job_process(job_id=job_id)
        return
    claimed = [job_id]
    limit = settings.INFERENCE_BATCH_SIZE
    # A job that was claimed before (its worker died, or the sweeper put it back) runs
    # alone, and only never-claimed jobs join a batch: if one image crashes the worker,
    # it cannot take its batch mates' attempts down with it again and again.
    first_try = InferenceJob.objects.filter(id=job_id, attempts=1).exists()
    if limit > 1 and first_try:
        # Only jobs of the same task share a batch: they run through the same model.
        task = Case.objects.filter(scans__job__id=job_id).values_list("task", flat=True).first() or ""
        waiting = (
            InferenceJob.objects.filter(
                status=InferenceJob.Status.QUEUED, scan__case__task=task, attempts=0, scan__kind=Scan.Kind.IMAGE
            )
            .exclude(id=job_id)
            .order_by("created_at", "id")
            .values_list("id", flat=True)[: limit - 1]
        )
        claimed += [other for other in waiting if _job_claim(other, me)]
    jobs_process(job_ids=claimed)


def _job_claim(job_id: int, me: str) -> bool:
    now = timezone.now()
    return bool(
        InferenceJob.objects.filter(id=job_id, status=InferenceJob.Status.QUEUED).update(
            status=InferenceJob.Status.RUNNING,
            attempts=F("attempts") + 1,
            started_at=now,
            updated_at=now,
            claimed_by=me,
        )
    )


HEATMAP_PX = 64


@dataclass(frozen=True)
class JobOutcome:
    job_id: int
    probabilities: list[float]
    heatmap_png: bytes | None = None


def jobs_process(*, job_ids: list[int]) -> None:
    """Decode, predict (with heat maps) in one compiled call and store the results of
    claimed jobs. Jobs of one call share a task (see job_run)."""
    jobs = list(InferenceJob.objects.select_related("scan", "scan__case").filter(id__in=job_ids).order_by("id"))
    if not jobs:
        return
    try:
        model_version = active_model_for_task(jobs[0].scan.case.task)
        from diagnostics.inference import runner_for
        from diagnostics.ml.bundle import BundleError

        try:
            runner = runner_for(model_version)
        except BundleError as exc:  # says which file or hash is wrong; never patient data
            raise JobError(f"the model bundle cannot be used: {exc}") from exc
    except Exception as exc:
        for job in jobs:
            job_fail(job, exc)
        return
    started = time.perf_counter()

    def load(job: InferenceJob) -> Any:
        try:
            data = storage.read_bytes(job.scan.storage_name)
        except storage.EncryptionError as exc:
            raise JobError(f"stored scan bytes failed decryption: {exc}") from exc
        # Compared after decryption: the address is the hash of the plaintext.
        if storage.sha256_bytes(data) != job.scan.sha256:
            raise JobError("stored scan bytes do not match their SHA-256")
        return imaging.decode_for_model(data, size=runner.input_size)

    # Decoding dominates small models (docs/performance.md) and Pillow releases the GIL:
    # decode the batch's images in parallel threads.
    from concurrent.futures import ThreadPoolExecutor

    ready: list[tuple[InferenceJob, Any]] = []
    with ThreadPoolExecutor(max_workers=settings.INFERENCE_DECODE_THREADS) as pool:
        futures = [(job, pool.submit(load, job)) for job in jobs]
        for job, future in futures:
            try:
                ready.append((job, future.result()))
            except Exception as exc:
                job_fail(job, exc)
    if not ready:
        return
    try:
        import numpy as np

        from diagnostics.ml.heatmap import heatmap_png

        probabilities, cams = runner.predict_with_heatmaps(np.stack([array for _, array in ready]))
        # 64 px is plenty for a map of a 6x6..7x7 feature grid (the browser scales it
        # smoothly); encoding it at 224 px cost more than the network call (bench/).
        heatmaps = [heatmap_png(cam, size=min(runner.input_size, HEATMAP_PX)) for cam in cams]
    except Exception as exc:
        for job, _ in ready:
            job_fail(job, exc)
        return
    # Time per image for the whole batch: read, check, decode, the network and heat map.
    per_image_ms = (time.perf_counter() - started) * 1000.0 / len(ready)
    try:
        predictions_store(
            model_version=model_version,
            outcomes=[
                JobOutcome(job_id=job.id, probabilities=[float(p) for p in row], heatmap_png=png)
                for (job, _), row, png in zip(ready, probabilities, heatmaps, strict=True)
            ],
            inference_ms=per_image_ms,
        )
    except Exception as exc:
        # Nothing of the batch was written (one transaction): no job may stay "running".
        for job, _ in ready:
            job_fail(job, exc)
    else:
        # Candidates of the task predict in shadow on the same scans (stored apart, shown to nobody).
        shadow_after_batch(job_ids=[job.id for job, _ in ready])


def _build_prediction(job: InferenceJob, model_version: ModelVersion, outcome: JobOutcome, ms: float) -> Prediction:
    labels = list(model_version.labels)
    probabilities = outcome.probabilities
    if len(probabilities) != len(labels):
        raise JobError(f"model returned {len(probabilities)} probabilities for {len(labels)} labels")
    index = max(range(len(labels)), key=lambda i: probabilities[i])
    heatmap_name = ""
    if outcome.heatmap_png is not None:
        heatmap_name, _ = storage.store_bytes(
            data=outcome.heatmap_png, sha256=storage.sha256_bytes(outcome.heatmap_png)
        )
    return Prediction(
        job=job,
        scan=job.scan,
        model_version=model_version,
        labels=labels,
        probabilities=probabilities,
        predicted_label=labels[index],
        predicted_index=index,
        stage_rank=index / (len(labels) - 1) if len(labels) > 1 else 0.0,
        confidence=probabilities[index],
        uncertain=probabilities[index] < model_version.uncertain_below,
        heatmap_storage_name=heatmap_name,
        input_sha256=job.scan.sha256,
        inference_ms=ms,
    )


def predictions_store(
    *, model_version: ModelVersion, outcomes: list[JobOutcome], inference_ms: float
) -> list[Prediction]:
    """Record a batch of predictions and queue them for review, in ONE transaction.

    Per-prediction transactions with full uniqueness checks cost more than the network
    at batch 8 (bench/), so: lock the batch's jobs once, validate fields without the
    redundant unique queries (the OneToOne constraints on job and scan still hold in the
    database and catch a concurrent duplicate), bulk-insert predictions and review
    items, and write one audit event per prediction in the same transaction."""
    by_job = {o.job_id: o for o in outcomes}
    try:
        with transaction.atomic():
            jobs = list(
                InferenceJob.objects.select_for_update(of=("self",))
                .select_related("scan")
                .filter(id__in=by_job, status=InferenceJob.Status.RUNNING, prediction__isnull=True)
                .order_by("id")
            )
            # A job that is no longer running, or already has its prediction, was finished
            # by a duplicate delivery: a quiet no-op for that job.
            predictions = []
            for job in jobs:
                prediction = _build_prediction(job, model_version, by_job[job.id], inference_ms)
                # Field checks yes; not the FK existence queries (3 per row: the job and scan
                # were just locked, the model version is loaded) nor the unique queries: the
                # database's FK and unique constraints still hold them.
                prediction.full_clean(
                    exclude=["job", "scan", "model_version"], validate_unique=False, validate_constraints=False
                )
                predictions.append(prediction)
            if not predictions:
                return []
            Prediction.objects.bulk_create(predictions)
            ReviewItem.objects.bulk_create([ReviewItem(prediction=p) for p in predictions])
            worklists_changed(unit_ids=Case.objects.filter(scans__job__in=jobs).values_list("unit_id", flat=True))
            finished = timezone.now()
            InferenceJob.objects.filter(id__in=[j.id for j in jobs]).update(
                status=InferenceJob.Status.SUCCEEDED, finished_at=finished, updated_at=finished, error=""
            )
            for prediction in predictions:
                audit_record(
                    actor=None,
                    action="prediction.create",
                    obj=prediction,
                    data={
                        "model": str(model_version),
                        "predicted": prediction.predicted_label,
                        "uncertain": prediction.uncertain,
                        "scan": str(prediction.scan.uuid),
                    },
                )
            return predictions
    except IntegrityError:
        # The unique constraints on scan and job caught a concurrent duplicate, and the
        # batch's transaction rolled back: store the others one by one, so the duplicate
        # alone is skipped.
        if len(outcomes) > 1:
            return [
                p
                for o in outcomes
                for p in predictions_store(model_version=model_version, outcomes=[o], inference_ms=inference_ms)
            ]
        if Prediction.objects.filter(job_id__in=list(by_job)).exists():
            return []
        raise


@dataclass
class SweepResult:
    resent: list[int] = field(default_factory=list)  # queued too long: message sent again
    requeued: list[int] = field(default_factory=list)  # running too long: back to queued
    failed: list[int] = field(default_factory=list)  # out of attempts


def job_sweep(*, limit: int = 500) -> SweepResult:
    """The job row is the truth: re-send jobs whose broker message may be lost, put
    back jobs whose worker was lost, and fail a job after its last attempt.

    Safe to run from several processes at once: rows are locked with SKIP LOCKED,
    and a job that two sweeps both send is claimed by one worker only."""
    now = timezone.now()
    result = SweepResult()
    running_cutoff = now - timedelta(seconds=settings.JOB_RUNNING_DEADLINE_S)
    queued_cutoff = now - timedelta(seconds=settings.JOB_QUEUED_DEADLINE_S)
    with transaction.atomic():
        stale_running = (
            InferenceJob.objects.select_for_update(skip_locked=True)
            .filter(status=InferenceJob.Status.RUNNING, started_at__lt=running_cutoff)
            .order_by("id")[:limit]
        )
        for job in stale_running:
            if job.attempts >= settings.JOB_MAX_ATTEMPTS:
                job.status = InferenceJob.Status.FAILED
                job.error = (
                    f"gave up after {job.attempts} attempt(s): none finished within "
                    f"{settings.JOB_RUNNING_DEADLINE_S} s (worker lost or too slow)"
                )
                job.finished_at = now
                result.failed.append(job.id)
                action = "job.fail"
            else:
                job.status = InferenceJob.Status.QUEUED
                result.requeued.append(job.id)
                action = "job.requeue"
            job.updated_at = now
            job.save(update_fields=["status", "error", "finished_at", "updated_at"])
            audit_record(
                actor=None,
                action=action,
                obj=job,
                data={"attempts": job.attempts, "deadline_s": settings.JOB_RUNNING_DEADLINE_S},
            )
        stale_queued = list(
            InferenceJob.objects.select_for_update(skip_locked=True)
            .filter(status=InferenceJob.Status.QUEUED, updated_at__lt=queued_cutoff)
            .order_by("id")
            .values_list("id", flat=True)[:limit]
        )
        # Touch them so each is re-sent at most once per deadline, not on every sweep.
        InferenceJob.objects.filter(id__in=stale_queued).update(updated_at=now)
        result.resent.extend(stale_queued)
        for job_id in [*result.requeued, *result.resent]:
            transaction.on_commit(partial(job_send, job_id))
    if result.requeued or result.resent or result.failed:
        logger.info(
            "job sweep: %d re-sent, %d requeued, %d failed",
            len(result.resent),
            len(result.requeued),
            len(result.failed),
        )
    return result


def job_retry(*, acting_user: User, job: InferenceJob, client_address: str | None = None) -> InferenceJob:
    """Send a failed job through inference again, on the clinician's request.

    Only a failed job. Nothing is deleted: the job goes back to queued with its
    attempt count reset to 0 (a fresh budget of JOB_MAX_ATTEMPTS), and the previous
    attempts and error are kept in the audit event."""
    if not acting_user.has_perm(UPLOAD_PERMISSION):
        raise PermissionDenied("your role cannot retry analyses")
    with transaction.atomic():
        locked = InferenceJob.objects.select_for_update().select_related("scan__case").get(pk=job.pk)
        if not cases_for_user(user=acting_user).filter(pk=locked.scan.case_id).exists():
            raise PermissionDenied("this analysis belongs to a case outside your care units")
        if locked.status != InferenceJob.Status.FAILED:
            raise ValidationError(
                {
                    "status": ValidationError(
                        f"only a failed analysis can be retried; this one is {locked.status}", code="job_not_failed"
                    )
                }
            )
        previous = {"attempts": locked.attempts, "error": locked.error}
        now = timezone.now()
        locked.status = InferenceJob.Status.QUEUED
        locked.attempts = 0
        locked.error = ""
        locked.started_at = None
        locked.finished_at = None
        locked.updated_at = now
        locked.full_clean()
        locked.save(update_fields=["status", "attempts", "error", "started_at", "finished_at", "updated_at"])
        audit_record(
            actor=acting_user,
            action="job.retry",
            obj=locked,
            data={"scan": str(locked.scan.uuid), "previous": previous},
            client_address=client_address,
        )
        job_enqueue(locked)
    return locked


def worker_heartbeat(*, hostname: str, pid: int) -> None:
    """A worker's sign of life for /health/ (no clinical data, so no audit event)."""
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname[:255], defaults={"pid": pid, "last_seen": timezone.now()}
    )
