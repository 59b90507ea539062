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

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.audit import audit_record
from accounts.models import User
from accounts.roles import REVIEW_PERMISSION, UPLOAD_PERMISSION
from diagnostics import storage
from diagnostics.models import (
    Case,
    InferenceJob,
    ModelVersion,
    Prediction,
    ReviewDecision,
    ReviewItem,
    Scan,
    WorkerHeartbeat,
)
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
    files: list[IncomingFile] | None = None,
    client_address: str | None = None,
) -> Case:
    """Create a case and, when files are given, upload them to it, all or nothing."""
    if not acting_user.has_perm("diagnostics.add_case"):
        raise PermissionDenied("your role cannot create cases")
    created_names: list[str] = []
    try:
        with transaction.atomic():
            case = Case(patient_ref=patient_ref.strip(), body_site=body_site.strip(), note=note, created_by=acting_user)
            case.full_clean()
            case.save()
            audit_record(
                actor=acting_user,
                action="case.create",
                obj=case,
                data={"body_site": case.body_site},
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
    if case.created_by_id != acting_user.id:
        raise PermissionDenied("only the case's creator can add scans")
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
    """Run one inference job. Safe to call twice: only a caller that claims the
    job (queued -> running by a conditional update) does the work."""
    now = timezone.now()
    me = _process_identity()
    claimed = InferenceJob.objects.filter(id=job_id, status=InferenceJob.Status.QUEUED).update(
        status=InferenceJob.Status.RUNNING, attempts=F("attempts") + 1, started_at=now, updated_at=now, claimed_by=me
    )
    if not claimed and not _reclaim_from_dead_process(job_id, me, now):
        return
    job = InferenceJob.objects.select_related("scan").get(id=job_id)
    try:
        model_version = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
        if model_version is None:
            raise JobError("no active model is registered")
        from diagnostics.inference import runner_for

        runner = runner_for(model_version)
        data = storage.read_bytes(job.scan.storage_name)
        if storage.sha256_bytes(data) != job.scan.sha256:
            raise JobError("stored scan bytes do not match their SHA-256")
        started = time.perf_counter()
        if settings.TEST_INFERENCE_DELAY_MS:  # test aid: lets fault tests kill a worker mid-inference
            time.sleep(settings.TEST_INFERENCE_DELAY_MS / 1000.0)
        batch = runner.preprocess(data)[None, ...]
        probabilities = [float(p) for p in runner.predict_arrays(batch)[0]]
        inference_ms = (time.perf_counter() - started) * 1000.0
    except (OperationalError, InterfaceError):
        # The database went away, not the job: it stays running and the sweeper puts
        # it back in the queue after the running deadline.
        raise
    except Exception as exc:
        reason = str(exc) if isinstance(exc, JobError) else f"inference failed: {type(exc).__name__}"
        logger.warning("inference job %s failed: %s", job.uuid, reason)
        InferenceJob.objects.filter(id=job_id, status=InferenceJob.Status.RUNNING).update(
            status=InferenceJob.Status.FAILED, error=reason, finished_at=timezone.now(), updated_at=timezone.now()
        )
        return
    prediction_store(
        job_id=job_id,
        model_version=model_version,
        probabilities=probabilities,
        inference_ms=inference_ms,
    )


def prediction_store(
    *, job_id: int, model_version: ModelVersion, probabilities: list[float], inference_ms: float
) -> Prediction | None:
    """Record a job's prediction and put it in the review queue, once."""
    labels = list(model_version.labels)
    if len(probabilities) != len(labels):
        raise JobError(f"model returned {len(probabilities)} probabilities for {len(labels)} labels")
    index = max(range(len(labels)), key=lambda i: probabilities[i])
    try:
        with transaction.atomic():
            job = InferenceJob.objects.select_for_update().select_related("scan").get(id=job_id)
            if job.status != InferenceJob.Status.RUNNING or Prediction.objects.filter(scan=job.scan).exists():
                return None  # a duplicate delivery finished it already: a quiet no-op
            prediction = Prediction(
                job=job,
                scan=job.scan,
                model_version=model_version,
                labels=labels,
                probabilities=probabilities,
                predicted_label=labels[index],
                predicted_index=index,
                stage_rank=index / (len(labels) - 1) if len(labels) > 1 else 0.0,
                confidence=probabilities[index],
                input_sha256=job.scan.sha256,
                inference_ms=inference_ms,
            )
            prediction.full_clean()
            prediction.save()
            ReviewItem.objects.create(prediction=prediction)
            finished = timezone.now()
            job.status = InferenceJob.Status.SUCCEEDED
            job.finished_at = finished
            job.updated_at = finished
            job.error = ""
            job.save(update_fields=["status", "finished_at", "updated_at", "error"])
            audit_record(
                actor=None,
                action="prediction.create",
                obj=prediction,
                data={"model": str(model_version), "predicted": labels[index], "scan": str(job.scan.uuid)},
            )
            return prediction
    except IntegrityError:
        # The unique constraints on scan and job caught a concurrent duplicate.
        if Prediction.objects.filter(job_id=job_id).exists():
            return None
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
        if locked.scan.case.created_by_id != acting_user.id:
            raise PermissionDenied("only the case's creator can retry its analyses")
        if locked.status != InferenceJob.Status.FAILED:
            raise ValidationError({"job": f"only a failed analysis can be retried; this one is {locked.status}"})
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
) -> ReviewDecision:
    """A physician confirms or rejects a prediction, or corrects a signed decision,
    and signs it by re-entering the password. Signed decisions are never edited."""
    if not acting_user.has_perm(REVIEW_PERMISSION):
        raise PermissionDenied("only physicians can sign review decisions")
    if not password or not acting_user.check_password(password):
        raise SignatureError("signature_failed", "the password is not correct; the decision was not signed")
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
            supersedes=supersedes,
        )
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
            },
            client_address=client_address,
        )
    return decision


# --- model registry --------------------------------------------------------------


def model_register(*, acting_user: User | None, bundle_dir: str | Path, activate: bool = False) -> ModelVersion:
    """Register a model bundle after checking its file against the manifest's hash."""
    from diagnostics.ml.bundle import verify_bundle

    path = Path(bundle_dir).resolve()
    manifest = verify_bundle(path)  # raises BundleError naming the problem
    try:
        stored_path = str(path.relative_to(settings.BASE_DIR))
    except ValueError:
        stored_path = str(path)
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
                task=manifest.task,
                labels=list(manifest.labels),
                bundle_path=stored_path,
                sha256=manifest.model_sha256,
                metrics=manifest.metrics,
                registered_by=acting_user,
            )
            model_version.full_clean()
            model_version.save()
            audit_record(
                actor=acting_user, action="model.register", obj=model_version, data={"sha256": manifest.model_sha256}
            )
        if activate and model_version.status != ModelVersion.Status.ACTIVE:
            model_activate(acting_user=acting_user, model_version=model_version)
    return model_version


def model_activate(*, acting_user: User | None, model_version: ModelVersion) -> ModelVersion:
    """Make one version the active one. Past predictions keep the version they came from."""
    with transaction.atomic():
        previous = list(
            ModelVersion.objects.select_for_update()
            .filter(status=ModelVersion.Status.ACTIVE)
            .exclude(pk=model_version.pk)
        )
        for old in previous:
            old.status = ModelVersion.Status.RETIRED
            old.save(update_fields=["status"])
            audit_record(actor=acting_user, action="model.retire", obj=old, data={"replaced_by": str(model_version)})
        model_version.status = ModelVersion.Status.ACTIVE
        model_version.save(update_fields=["status"])
        audit_record(actor=acting_user, action="model.activate", obj=model_version, data={})
    return model_version
