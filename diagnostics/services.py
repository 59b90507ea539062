"""Writes: one function per use case. Each takes the acting user, validates,
changes the database in one transaction and records the audit event in it."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import F, Q
from django.utils import timezone
from guardian.shortcuts import assign_perm

from accounts.audit import audit_record
from accounts.models import CareUnit, User
from accounts.otp import confirmed_device
from accounts.roles import REVIEW_PERMISSION, UPLOAD_PERMISSION
from diagnostics import dicom, imaging, signatures, storage
from diagnostics.models import (
    BlindedRead,
    Case,
    InferenceJob,
    ModelVersion,
    Notification,
    Prediction,
    ReviewDecision,
    ReviewerPreference,
    ReviewItem,
    Scan,
    WorkerHeartbeat,
)
from diagnostics.selectors import active_tasks, cases_for_user
from diagnostics.validation import UploadRejected, validate_image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IncomingFile:
    name: str
    data: bytes


@dataclass
class UploadResult:
    created: list[Scan] = field(default_factory=list)
    repeated: list[Scan] = field(default_factory=list)


class UploadBatchRejected(Exception):
    """One or more files were refused; nothing of the batch was stored."""

    def __init__(self, errors: list[tuple[str, UploadRejected]]) -> None:
        super().__init__("; ".join(f"{name}: {err.message}" for name, err in errors))
        self.errors = errors


class SignatureError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _enqueue_inference(job: InferenceJob) -> None:
    job_id = job.id
    # After commit only: the worker must find the rows, and a rolled-back upload
    # must not leave a message behind.
    transaction.on_commit(lambda: _send_inference(job_id))


def _send_inference(job_id: int) -> None:
    from diagnostics.tasks import run_inference_task

    try:
        run_inference_task.delay(job_id=job_id)
    except Exception:  # broker down: the job row stays queued for the sweeper
        logger.warning("could not enqueue inference job %s; it stays queued", job_id, exc_info=True)


def _safe_filename(name: str) -> str:
    base = Path(name or "").name
    return base[:255]


def case_create(
    *,
    acting_user: User,
    patient_ref: str,
    body_site: str,
    note: str = "",
    task: str | None = None,
    files: list[IncomingFile] | None = None,
    client_address: str | None = None,
    unit: CareUnit | None = None,
) -> Case:
    """Create a case in one of the creator's care units and, when files are given,
    upload them to it, all or nothing. With one unit the unit may be left out."""
    if not acting_user.has_perm("diagnostics.add_case"):
        raise PermissionDenied("your role cannot create cases")
    units = list(CareUnit.objects.filter(group__user=acting_user))
    if unit is None:
        if len(units) != 1:
            raise ValidationError(
                {"unit": "choose the care unit of this case" if units else "you belong to no care unit; ask an admin"}
            )
        unit = units[0]
    elif unit.pk not in {u.pk for u in units}:
        raise ValidationError({"unit": "you can create cases only in your own care units"})
    task = _case_task(task)
    created_names: list[str] = []
    try:
        with transaction.atomic():
            case = Case(
                patient_ref=patient_ref.strip(),
                body_site=body_site.strip(),
                note=note,
                task=task,
                created_by=acting_user,
                unit=unit,
            )
            case.full_clean()
            case.save()
            # The unit's members see the case through this one grant; joining or
            # leaving the unit later changes who sees it without touching the case.
            assign_perm("diagnostics.view_case", unit.group, case)
            audit_record(
                actor=acting_user,
                action="case.create",
                obj=case,
                data={"new": {"body_site": case.body_site, "unit": str(unit.uuid), "task": case.task}},
                client_address=client_address,
            )
            if files:
                _scans_upload_inner(
                    acting_user=acting_user,
                    case=case,
                    files=files,
                    client_address=client_address,
                    created_names=created_names,
                )
    except BaseException:
        _cleanup(created_names)
        raise
    return case


def _case_task(task: str | None) -> str:
    tasks = active_tasks()
    if task is None or not task.strip():
        if len(tasks) == 1:
            return tasks[0]
        if not tasks:
            # Nothing is active yet: the case waits without a task and its jobs fail
            # with a stated reason (or use the one model activated before they run).
            return ""
        raise ValidationError({"task": f"choose the task to analyse for: {'; '.join(tasks)}"})
    task = task.strip()
    if task not in tasks:
        raise ValidationError({"task": f"no active model answers '{task}'; choose one of: {'; '.join(tasks)}"})
    return task


def scans_upload(
    *, acting_user: User, case: Case, files: list[IncomingFile], client_address: str | None = None
) -> UploadResult:
    """Validate every file, then store them all and queue one inference job per new
    scan. If any file is refused, nothing is stored."""
    created_names: list[str] = []
    try:
        with transaction.atomic():
            return _scans_upload_inner(
                acting_user=acting_user,
                case=case,
                files=files,
                client_address=client_address,
                created_names=created_names,
            )
    except BaseException:
        _cleanup(created_names)
        raise


def _cleanup(names: list[str]) -> None:
    for name in names:
        try:
            storage.delete_if_unreferenced(name)
        except Exception:  # the database may be the thing that failed
            storage.scan_storage().delete(name)


def _scans_upload_inner(
    *,
    acting_user: User,
    case: Case,
    files: list[IncomingFile],
    client_address: str | None,
    created_names: list[str],
) -> UploadResult:
    if not acting_user.has_perm(UPLOAD_PERMISSION):
        raise PermissionDenied("your role cannot upload scans")
    if case.unit_id is None or not acting_user.groups.filter(care_unit__id=case.unit_id).exists():
        raise PermissionDenied("only members of the case's care unit can add scans")
    if not files:
        raise UploadBatchRejected([("(no file)", UploadRejected("no_file", "choose at least one image to upload"))])
    if len(files) > settings.UPLOAD_MAX_FILES:
        raise UploadBatchRejected(
            [("(batch)", UploadRejected("too_many_files", f"at most {settings.UPLOAD_MAX_FILES} files per upload"))]
        )

    errors: list[tuple[str, UploadRejected]] = []
    checked = []
    for incoming in files:
        name = _safe_filename(incoming.name)
        try:
            info = validate_image(
                data=incoming.data,
                filename=name,
                max_bytes=settings.UPLOAD_MAX_BYTES,
                max_pixels=settings.UPLOAD_MAX_PIXELS,
            )
        except UploadRejected as err:
            errors.append((name or "(unnamed)", err))
            continue
        checked.append((name, incoming.data, info))
    if errors:
        raise UploadBatchRejected(errors)

    result = UploadResult()
    seen: set[str] = set()
    for name, data, info in checked:
        if info.format == Scan.Format.DICOM:
            # De-identified before anything is stored: only the pseudonymous case
            # reference stays, and the stored (and hashed) bytes are the cleaned file.
            try:
                data = dicom.deidentify(data, pseudonym=case.patient_ref, uid_secret=settings.SECRET_KEY.encode())
                # What is stored is what the worker reads: it must pass validation too.
                dicom.check(data, max_pixels=settings.UPLOAD_MAX_PIXELS)
            except Exception as exc:  # a value pydicom read but cannot write: refuse, never store the original
                refused = UploadRejected("dicom_deidentification_failed", "the DICOM file could not be de-identified")
                raise UploadBatchRejected([(name or "(unnamed)", refused)]) from exc
        digest = storage.sha256_bytes(data)
        existing = Scan.objects.filter(case=case, sha256=digest, uploaded_by=acting_user).first()
        if existing is not None or digest in seen:
            if existing is not None:
                result.repeated.append(existing)
            continue
        seen.add(digest)
        storage_name, created = storage.store_bytes(data=data, sha256=digest)
        if created:
            created_names.append(storage_name)
        scan = Scan(
            case=case,
            sha256=digest,
            storage_name=storage_name,
            original_name=name,
            format=info.format,
            width=info.width,
            height=info.height,
            burned_in_annotation=info.burned_in_annotation,
            size_bytes=len(data),
            uploaded_by=acting_user,
        )
        scan.full_clean()
        scan.save()
        job = InferenceJob.objects.create(scan=scan)
        audit_record(
            actor=acting_user,
            action="scan.upload",
            obj=scan,
            data={"case": str(case.uuid), "sha256": digest, "format": info.format, "bytes": len(data)},
            client_address=client_address,
        )
        _enqueue_inference(job)
        result.created.append(scan)
    return result


# --- inference -----------------------------------------------------------------


class JobError(Exception):
    """A reason a job cannot succeed, phrased for the job's error field."""


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
            InferenceJob.objects.filter(status=InferenceJob.Status.QUEUED, scan__case__task=task, attempts=0)
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


def _job_fail(job: InferenceJob, exc: Exception) -> None:
    if isinstance(exc, OperationalError | InterfaceError):
        # The database went away, not the job: it stays running and the sweeper puts
        # it back in the queue after the running deadline.
        raise exc
    reason = str(exc) if isinstance(exc, JobError) else f"inference failed: {type(exc).__name__}"
    logger.warning("inference job %s failed: %s", job.uuid, reason)
    now = timezone.now()
    InferenceJob.objects.filter(id=job.id, status=InferenceJob.Status.RUNNING).update(
        status=InferenceJob.Status.FAILED, error=reason, finished_at=now, updated_at=now
    )


def _active_model_for_task(task: str) -> ModelVersion:
    active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE)
    if task:
        model_version = active.filter(task=task).first()
        if model_version is None:
            raise JobError("no active model is registered for this case's task")
        return model_version
    # A case from before tasks existed: only unambiguous while one model is active.
    models = list(active[:2])
    if not models:
        raise JobError("no active model is registered")
    if len(models) > 1:
        raise JobError("the case has no task and several models are active")
    return models[0]


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
        model_version = _active_model_for_task(jobs[0].scan.case.task)
        from diagnostics.inference import runner_for

        runner = runner_for(model_version)
    except Exception as exc:
        for job in jobs:
            _job_fail(job, exc)
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

    # Decoding dominates small models (docs/MEASURED.md) and Pillow releases the GIL:
    # decode the batch's images in parallel threads.
    from concurrent.futures import ThreadPoolExecutor

    ready: list[tuple[InferenceJob, Any]] = []
    with ThreadPoolExecutor(max_workers=settings.INFERENCE_DECODE_THREADS) as pool:
        futures = [(job, pool.submit(load, job)) for job in jobs]
        for job, future in futures:
            try:
                ready.append((job, future.result()))
            except Exception as exc:
                _job_fail(job, exc)
    if not ready:
        return
    if settings.TEST_INFERENCE_DELAY_MS:  # test aid: lets fault tests kill a worker mid-inference
        time.sleep(settings.TEST_INFERENCE_DELAY_MS / 1000.0)
    try:
        import numpy as np

        from diagnostics.ml.heatmap import heatmap_png

        probabilities, cams = runner.predict_with_heatmaps(np.stack([array for _, array in ready]))
        # 64 px is plenty for a map of a 6x6..7x7 feature grid (the browser scales it
        # smoothly); encoding it at 224 px cost more than the network call (bench/).
        heatmaps = [heatmap_png(cam, size=min(runner.input_size, HEATMAP_PX)) for cam in cams]
    except Exception as exc:
        for job, _ in ready:
            _job_fail(job, exc)
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
            _job_fail(job, exc)


def prediction_store(
    *,
    job_id: int,
    model_version: ModelVersion,
    probabilities: list[float],
    inference_ms: float,
    heatmap_png: bytes | None = None,
) -> Prediction | None:
    """Record a job's prediction and put it in the review queue, once."""
    stored = predictions_store(
        model_version=model_version,
        outcomes=[JobOutcome(job_id=job_id, probabilities=probabilities, heatmap_png=heatmap_png)],
        inference_ms=inference_ms,
    )
    return stored[0] if stored else None


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
            transaction.on_commit(lambda job_id=job_id: _send_inference(job_id))
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
        _enqueue_inference(locked)
    return locked


def worker_heartbeat(*, hostname: str, pid: int) -> None:
    """A worker's sign of life for /health/ (no clinical data, so no audit event)."""
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname[:255], defaults={"pid": pid, "last_seen": timezone.now()}
    )


# --- review --------------------------------------------------------------------


def review_sign(
    *,
    acting_user: User,
    review_item: ReviewItem,
    outcome: str,
    stage: str,
    reason: str,
    password: str,
    supersedes: ReviewDecision | None = None,
    client_address: str | None = None,
    otp_token: str = "",
    otp_signed_in_session: bool = False,
) -> ReviewDecision:
    """A physician confirms or rejects a prediction, or corrects a signed decision,
    and signs it by re-entering the password and, where an authenticator is
    enrolled, a code from it. Signed decisions are never edited.

    21 CFR 11.200(a)(1)(i): within one continuous session (ours ends after 30 idle
    minutes) the first signing uses both components and later ones at least one;
    `otp_signed_in_session` says the session's first signing presented the code.
    The password is asked every time."""
    if not acting_user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("only physicians can sign review decisions")
    if not password or not acting_user.check_password(password):
        raise SignatureError("signature_failed", "the password is not correct; the decision was not signed")
    device = confirmed_device(acting_user)
    needs_code = device is not None and not otp_signed_in_session
    if needs_code and not device.verify_token((otp_token or "").strip()):  # type: ignore[union-attr]
        raise SignatureError(
            "second_factor_failed", "the authenticator code is not correct; the decision was not signed"
        )
    labels = list(review_item.prediction.labels)
    reason = reason.strip()
    if outcome == ReviewDecision.Outcome.CONFIRMED:
        if supersedes is not None:
            raise ValidationError({"outcome": "a correction must state a stage and a reason"})
        stage = review_item.prediction.predicted_label
    elif outcome == ReviewDecision.Outcome.REJECTED:
        if stage not in labels:
            raise ValidationError({"stage": f"choose one of the model's stages: {', '.join(labels)}"})
        if not reason:
            raise ValidationError({"reason": "a rejection or correction needs a reason"})
    else:
        raise ValidationError({"outcome": "choose confirm or reject"})

    with transaction.atomic():
        item = ReviewItem.objects.select_for_update().get(pk=review_item.pk)
        current = item.decisions.filter(superseded_by__isnull=True).first()
        if supersedes is None and current is not None:
            raise ValidationError({"outcome": "this item is already signed; record a correction instead"})
        if supersedes is not None and (current is None or supersedes.pk != current.pk):
            raise ValidationError({"supersedes": "only the current signed decision can be corrected"})
        decision = ReviewDecision(
            review_item=item,
            outcome=outcome,
            stage=stage,
            reason=reason,
            physician=acting_user,
            signer_name=acting_user.display_name,
            signed_at=timezone.now(),
            supersedes=supersedes,
        )
        decision.content_sha256 = signatures.content_sha256(decision)
        decision.full_clean()
        decision.save()
        if item.status != ReviewItem.Status.SIGNED:
            item.status = ReviewItem.Status.SIGNED
            item.save(update_fields=["status"])
        audit_record(
            actor=acting_user,
            action="review.correct" if supersedes else "review.sign",
            obj=decision,
            data={
                "review_item": str(item.uuid),
                "outcome": outcome,
                "stage": stage,
                "predicted": item.prediction.predicted_label,
                "supersedes": str(supersedes.uuid) if supersedes else None,
                "meaning": decision.meaning,
                "signer_name": decision.signer_name,
                "signed_at": decision.signed_at.isoformat(),
                "content_sha256": decision.content_sha256,
            },
            client_address=client_address,
        )
        _notify_case_signed(decision=decision)
    return decision


def record_view(*, acting_user: User, obj: Case | Scan | ReviewItem, client_address: str | None = None) -> None:
    """Every opening of a clinical record is audited (HIPAA access logging)."""
    audit_record(actor=acting_user, action="view", obj=obj, data={}, client_address=client_address)


# --- model registry --------------------------------------------------------------


def model_register(
    *,
    acting_user: User | None,
    bundle_dir: str | Path,
    activate: bool = False,
    task: str | None = None,
    force_labels: bool = False,
) -> ModelVersion:
    """Register a model bundle after checking its file against the manifest's hash.
    `task` overrides the manifest's task (to put a bundle under an existing task)."""
    from diagnostics.ml.bundle import verify_bundle

    path = Path(bundle_dir).resolve()
    manifest = verify_bundle(path)  # raises BundleError naming the problem
    try:
        stored_path = str(path.relative_to(settings.BASE_DIR))
    except ValueError:
        stored_path = str(path)
    task = (task or manifest.task).strip()
    with transaction.atomic():
        existing = ModelVersion.objects.filter(name=manifest.name, version=manifest.version).first()
        if existing is not None:
            if existing.sha256 != manifest.model_sha256:
                raise ValidationError(
                    {"version": f"{manifest.name} {manifest.version} is already registered with a different file"}
                )
            model_version = existing
        else:
            model_version = ModelVersion(
                name=manifest.name,
                version=manifest.version,
                task=task,
                labels=list(manifest.labels),
                bundle_path=stored_path,
                sha256=manifest.model_sha256,
                metrics=manifest.metrics,
                training_summary={
                    "data_summary": manifest.data_summary,
                    "library_versions": manifest.library_versions,
                    "training": manifest.metrics.get("training", {}),
                },
                temperature=manifest.temperature,
                uncertain_below=manifest.uncertain_below,
                registered_by=acting_user,
            )
            model_version.full_clean()
            model_version.save()
            audit_record(
                actor=acting_user,
                action="model.register",
                obj=model_version,
                data={"sha256": manifest.model_sha256, "task": task},
            )
        if activate and model_version.status != ModelVersion.Status.ACTIVE:
            model_activate(acting_user=acting_user, model_version=model_version, force_labels=force_labels)
    return model_version


def model_activate(
    *, acting_user: User | None, model_version: ModelVersion, force_labels: bool = False
) -> ModelVersion:
    """Make a version the active one of its task, retiring the version it replaces.
    Past predictions keep the version they came from.

    A replacement whose ordered labels differ from the active version's is refused
    unless `force_labels`: a hospital expects a task's stage vocabulary to stay put
    (review forms, worklists and reports compare stages by these names and their
    order), so changing it is a deliberate, audited act, not a side effect of an
    upgrade."""
    with transaction.atomic():
        # Lock every version of the task so two activations cannot interleave.
        previous = list(
            ModelVersion.objects.select_for_update()
            .filter(task=model_version.task, status=ModelVersion.Status.ACTIVE)
            .exclude(pk=model_version.pk)
        )
        changed = [old for old in previous if list(old.labels) != list(model_version.labels)]
        if changed and not force_labels:
            old = changed[0]
            raise ValidationError(
                {
                    "labels": f"{model_version} has labels {list(model_version.labels)} but the active "
                    f"{old} of this task has {list(old.labels)}; activating it would change the task's "
                    "stages. Force it explicitly if that is intended."
                }
            )
        for old in previous:
            old.status = ModelVersion.Status.RETIRED
            old.save(update_fields=["status"])
            audit_record(actor=acting_user, action="model.retire", obj=old, data={"replaced_by": str(model_version)})
        model_version.status = ModelVersion.Status.ACTIVE
        model_version.save(update_fields=["status"])
        audit_record(
            actor=acting_user,
            action="model.activate",
            obj=model_version,
            data={"task": model_version.task, "labels_changed_forced": bool(changed)},
        )
    return model_version


# --- reviewer preferences, blinded reads, notifications ---------------------------


def reviewer_preference_set(
    *, acting_user: User, blinded_first: bool, client_address: str | None = None
) -> ReviewerPreference:
    if not acting_user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("review settings are for physicians")
    with transaction.atomic():
        pref, _ = ReviewerPreference.objects.select_for_update().get_or_create(user=acting_user)
        old = pref.blinded_first
        pref.blinded_first = blinded_first
        pref.full_clean()
        pref.save()
        audit_record(
            actor=acting_user,
            action="reviewer_preference.set",
            obj=acting_user,
            data={"blinded_first": {"old": old, "new": blinded_first}},
            client_address=client_address,
        )
    return pref


def blinded_read_record(
    *, acting_user: User, review_item: ReviewItem, stage: str, client_address: str | None = None
) -> BlindedRead:
    """Keep the stage a physician chose before the AI's answer was shown. Recorded once:
    after the reveal a second blind read would not be blind."""
    if not acting_user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("only physicians record reads")
    labels = list(review_item.prediction.labels)
    if stage not in labels:
        raise ValidationError({"stage": f"choose one of the model's stages: {', '.join(labels)}"})
    with transaction.atomic():
        item = ReviewItem.objects.select_for_update().get(pk=review_item.pk)
        if item.blinded_reads.filter(physician=acting_user).exists():
            raise ValidationError({"stage": "your blinded stage for this item is already recorded"})
        read = BlindedRead(review_item=item, physician=acting_user, stage=stage)
        read.full_clean()
        read.save()
        audit_record(
            actor=acting_user,
            action="review.blinded_read",
            obj=read,
            data={"review_item": str(item.uuid), "stage": stage},
            client_address=client_address,
        )
    return read


def _notify(*, user: User, kind: str, message: str, link: str, review_item: ReviewItem | None) -> Notification:
    """An in-app notification and, after commit, the same news by e-mail. The e-mail
    carries no patient reference: mail leaves the hospital's systems."""
    note = Notification(user=user, kind=kind, message=message, link=link, review_item=review_item)
    note.full_clean()
    note.save()
    if user.email:
        subject = f"CancerWeb: {note.get_kind_display().lower()}"
        body = "There is news in CancerWeb for you. Sign in to see it"
        body += f": {settings.CANCERWEB_BASE_URL.rstrip('/')}{link}\n" if settings.CANCERWEB_BASE_URL else ".\n"
        address = user.email
        transaction.on_commit(lambda: _send_mail(subject=subject, body=body, to=address))
    return note


def _send_mail(*, subject: str, body: str, to: str) -> None:
    from django.core.mail import send_mail

    try:
        send_mail(subject, body, None, [to])
    except Exception:  # the in-app notification stands even when the mail server is down
        logger.warning("could not send a notification e-mail", exc_info=True)


def _notify_case_signed(*, decision: ReviewDecision) -> None:
    from django.urls import reverse

    case = decision.review_item.prediction.scan.case
    verb = "corrected" if decision.supersedes_id else "signed"
    _notify(
        user=case.created_by,
        kind=Notification.Kind.CASE_SIGNED,
        message=f"Case {case.patient_ref}: a physician {verb} a result.",
        link=reverse("case_detail", kwargs={"case_uuid": case.uuid}),
        review_item=decision.review_item,
    )


def reviews_notify_overdue() -> int:
    """Remind every physician of items waiting longer than REVIEW_OVERDUE_MINUTES.
    Safe to run again and again: one reminder per item and physician (a constraint)."""
    from django.urls import reverse

    cutoff = timezone.now() - timedelta(minutes=settings.REVIEW_OVERDUE_MINUTES)
    overdue = list(
        ReviewItem.objects.filter(status=ReviewItem.Status.PENDING, created_at__lt=cutoff).select_related(
            "prediction__scan__case"
        )
    )
    if not overdue:
        return 0
    app_label, codename = REVIEW_PERMISSION.split(".")
    physicians = list(
        User.objects.filter(is_active=True)
        .filter(
            Q(groups__permissions__codename=codename, groups__permissions__content_type__app_label=app_label)
            | Q(user_permissions__codename=codename, user_permissions__content_type__app_label=app_label)
        )
        .distinct()
    )
    sent = 0
    for item in overdue:
        for physician in physicians:
            if Notification.objects.filter(
                user=physician, review_item=item, kind=Notification.Kind.REVIEW_OVERDUE
            ).exists():
                continue
            try:
                with transaction.atomic():
                    _notify(
                        user=physician,
                        kind=Notification.Kind.REVIEW_OVERDUE,
                        message=f"Case {item.prediction.scan.case.patient_ref} waits for review "
                        f"for more than {settings.REVIEW_OVERDUE_MINUTES} minutes.",
                        link=reverse("review_detail", kwargs={"item_uuid": item.uuid}),
                        review_item=item,
                    )
                sent += 1
            except (IntegrityError, ValidationError):
                continue  # a concurrent run reminded this physician already
    return sent


def notifications_mark_read(*, acting_user: User, notification_uuid: UUID | None = None) -> int:
    """Mark one of the user's notifications read, or all of them when no uuid is given."""
    qs = Notification.objects.filter(user=acting_user, read_at__isnull=True)
    if notification_uuid is not None:
        qs = qs.filter(uuid=notification_uuid)
    return qs.update(read_at=timezone.now())


# --- added for the REST API (issue 7) -----------------------------------------------


def model_retire(*, acting_user: User | None, model_version: ModelVersion) -> ModelVersion:
    """Retire a model version. Retiring the active one leaves no active model: new jobs
    fail with "no active model" until another is activated, which is what an admin
    who pulls a bad model wants."""
    with transaction.atomic():
        locked = ModelVersion.objects.select_for_update().get(pk=model_version.pk)
        if locked.status == ModelVersion.Status.RETIRED:
            raise ValidationError(
                {"status": ValidationError("this model version is already retired", code="already_retired")}
            )
        previous = locked.status
        locked.status = ModelVersion.Status.RETIRED
        locked.save(update_fields=["status"])
        audit_record(
            actor=acting_user,
            action="model.retire",
            obj=locked,
            data={"previous_status": previous, "task": locked.task},
        )
    return locked
