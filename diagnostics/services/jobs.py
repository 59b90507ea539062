"""Inference jobs: claim them in a worker, run the network on a batch, store the
predictions once, sweep lost jobs back, retry failed ones. Queueing and failing a job
live in services/job_queue.py, shared with the slide path (services/slides.py)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, connection, connections, transaction
from django.db.models import F
from django.utils import timezone

from accounts.audit import AuditEntry, audit_record, audit_record_many
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
from diagnostics.services.job_queue import (
    JobError,
    active_model_for_task,
    job_enqueue,
    job_fail,
    job_send,
    prediction_new,
)
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
    """Run an inference job, and with it other waiting jobs of the same task as one
    batch (dynamic batching). Safe to call twice: only a caller that claims a job
    (queued -> running by a conditional update) works on it, so a duplicate delivery,
    or the message of a job another worker already took into its batch, is a quiet
    no-op. A job whose claimer died on this host is taken over at once.

    The delivered job is claimed first; up to INFERENCE_BATCH_SIZE - 1 never-claimed
    waiting image jobs of its task join it, claimed in ONE statement, waiting up to
    INFERENCE_MAX_DELAY_MS for the batch to fill. While the network runs a batch, the
    next one is claimed and decoded in a thread (`_Pipeline`), for up to
    INFERENCE_DRAIN_S. A job that was claimed before (its worker died, or the sweeper
    put it back) runs alone, and only never-claimed jobs join a batch: if one image
    crashes the worker, it cannot take its batch mates' attempts down again and again."""
    if job_id in _succeeded_here:
        # This process stored the job's prediction (it came in another job's batch):
        # its own message is a no-op without a query. Succeeded is final (only a failed
        # job can be retried), so the shortcut cannot skip work.
        return
    now = timezone.now()
    me = _process_identity()
    if not _job_claim(job_id, me) and not _reclaim_from_dead_process(job_id, me, now):
        return
    row = InferenceJob.objects.filter(id=job_id).values("attempts", "scan__kind", "scan__case__task").first()
    if row is None:
        return
    if row["scan__kind"] == Scan.Kind.SLIDE:
        # A whole slide is thousands of tiles: it is a batch of its own (services/slides.py).
        slide_job_process(job_id=job_id)
        return
    limit = settings.INFERENCE_BATCH_SIZE
    if limit <= 1 or row["attempts"] != 1:
        jobs_process(job_ids=[job_id])
        return
    # Only jobs of the same task share a batch: they run through the same model.
    task = row["scan__case__task"] or ""
    claimed = [job_id, *_claim_waiting(task=task, me=me, limit=limit - 1, wait_ms=settings.INFERENCE_MAX_DELAY_MS)]
    _Pipeline(task=task, me=me, limit=limit).run(claimed)


class _RecentIds:
    """The ids of the last `size` jobs this process stored, for `job_run`'s shortcut."""

    def __init__(self, size: int) -> None:
        self._ids: OrderedDict[int, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    def add(self, job_ids: list[int]) -> None:
        with self._lock:
            for job_id in job_ids:
                self._ids[job_id] = None
            while len(self._ids) > self._size:
                self._ids.popitem(last=False)


_succeeded_here = _RecentIds(100_000)


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


def _claim_sql() -> str:
    job, scan, case = (m._meta.db_table for m in (InferenceJob, Scan, Case))
    return f"""
        WITH picked AS MATERIALIZED (
            SELECT j.id FROM {job} j
            JOIN {scan} s ON s.id = j.scan_id
            JOIN {case} c ON c.id = s.case_id
            WHERE j.status = %(queued)s AND j.attempts = 0 AND s.kind = %(image)s AND c.task = %(task)s
            ORDER BY j.created_at, j.id
            LIMIT %(limit)s
            FOR UPDATE OF j SKIP LOCKED
        )
        UPDATE {job} AS u SET status = %(running)s, attempts = u.attempts + 1,
            started_at = %(now)s, updated_at = %(now)s, claimed_by = %(me)s
        FROM picked WHERE u.id = picked.id
        RETURNING u.id
    """  # noqa: S608  # table names from the models' own metadata; every value is a parameter


def _claim_batch(*, task: str, me: str, limit: int) -> list[int]:
    """Claim up to `limit` never-claimed waiting image jobs of `task` in one statement.
    SKIP LOCKED: rows another worker is claiming at this moment are left to it, and a
    concurrent single-job claim of a row taken here finds it no longer queued."""
    if limit <= 0:
        return []
    params: dict[str, Any] = {
        "queued": InferenceJob.Status.QUEUED,
        "running": InferenceJob.Status.RUNNING,
        "image": Scan.Kind.IMAGE,
        "task": task,
        "limit": limit,
        "now": timezone.now(),
        "me": me,
    }
    if connection.vendor != "postgresql":
        # The demo's SQLite: one writer at a time anyway; claim each by a conditional update.
        waiting = (
            InferenceJob.objects.filter(
                status=InferenceJob.Status.QUEUED, attempts=0, scan__kind=Scan.Kind.IMAGE, scan__case__task=task
            )
            .order_by("created_at", "id")
            .values_list("id", flat=True)[:limit]
        )
        return [job_id for job_id in waiting if _job_claim(job_id, me)]
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(), params)
        return sorted(row[0] for row in cursor.fetchall())


def _claim_waiting(*, task: str, me: str, limit: int, wait_ms: int) -> list[int]:
    """`_claim_batch`, and while the batch is not full, again every few milliseconds
    until `wait_ms` have passed: what arrives within the delay joins the batch."""
    claimed = _claim_batch(task=task, me=me, limit=limit)
    give_up = time.monotonic() + wait_ms / 1000.0
    while len(claimed) < limit and time.monotonic() < give_up:
        time.sleep(min(0.005, max(0.0, give_up - time.monotonic())))
        claimed += _claim_batch(task=task, me=me, limit=limit - len(claimed))
    return claimed


HEATMAP_PX = 64


@dataclass(frozen=True)
class JobOutcome:
    job_id: int
    probabilities: list[float]
    heatmap_png: bytes | None = None
    # Outside what the model was trained on (diagnostics/ml/ood.py): the feature
    # distance (None without a reference in the bundle) and the reasons (empty: inside).
    ood_score: float | None = None
    ood_reasons: tuple[str, ...] = ()


@dataclass
class _Batch:
    """Claimed jobs of one task, decoded and ready for the network."""

    model_version: ModelVersion
    runner: Any
    ready: list[tuple[InferenceJob, Any]]
    prepare_s: float


def _prepare(job_ids: list[int], decode_pool: ThreadPoolExecutor) -> _Batch | None:
    """Load the claimed jobs and their model, read, check and decode their images in
    the pool's threads (Pillow releases the GIL). A job that cannot be read fails
    alone; None when none is left."""
    started = time.perf_counter()
    jobs = list(InferenceJob.objects.select_related("scan", "scan__case").filter(id__in=job_ids).order_by("id"))
    if not jobs:
        return None
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
        return None

    def load(job: InferenceJob) -> Any:
        try:
            data = storage.read_bytes(job.scan.storage_name)
        except storage.EncryptionError as exc:
            raise JobError(f"stored scan bytes failed decryption: {exc}") from exc
        # Compared after decryption: the address is the hash of the plaintext.
        if storage.sha256_bytes(data) != job.scan.sha256:
            raise JobError("stored scan bytes do not match their SHA-256")
        return imaging.decode_for_model(data, size=runner.input_size)

    ready: list[tuple[InferenceJob, Any]] = []
    futures = [(job, decode_pool.submit(load, job)) for job in jobs]
    for job, future in futures:
        try:
            ready.append((job, future.result()))
        except Exception as exc:
            job_fail(job, exc)
    if not ready:
        return None
    return _Batch(model_version, runner, ready, time.perf_counter() - started)


def _infer(batch: _Batch) -> tuple[Any, float] | None:
    """One compiled call on the batch: probabilities and heat maps, and its seconds."""
    started = time.perf_counter()
    try:
        import numpy as np

        out = batch.runner.run(np.stack([array for _, array in batch.ready]), heatmaps=True)
    except Exception as exc:
        for job, _ in batch.ready:
            job_fail(job, exc)
        return None
    return out, time.perf_counter() - started


def _store(batch: _Batch, out: Any, network_s: float) -> None:
    """The heat maps encoded and the batch's rows stored in one transaction."""
    started = time.perf_counter()
    ready = batch.ready
    try:
        import numpy as np

        from diagnostics.ml.heatmap import heatmap_png

        # 64 px is plenty for a map of a 6x6..7x7 feature grid (the browser scales it
        # smoothly); a palette PNG costs a fraction of a millisecond (bench/).
        size = min(batch.runner.input_size, HEATMAP_PX)
        heatmaps = [heatmap_png(cam, size=size) for cam in out.heatmaps]
        arrays = np.stack([array for _, array in ready])
        ood = batch.runner.ood_reasons(out, arrays, [(job.scan.width, job.scan.height) for job, _ in ready])
    except Exception as exc:
        for job, _ in ready:
            job_fail(job, exc)
        return
    # Time per image for the whole batch: read, check, decode, the network and heat map.
    per_image_ms = (batch.prepare_s + network_s + time.perf_counter() - started) * 1000.0 / len(ready)
    try:
        predictions_store(
            model_version=batch.model_version,
            outcomes=[
                JobOutcome(
                    job_id=job.id,
                    probabilities=[float(p) for p in row],
                    heatmap_png=png,
                    ood_score=o["score"],
                    ood_reasons=tuple(o["reasons"]),
                )
                for (job, _), row, png, o in zip(ready, out.probabilities, heatmaps, ood, strict=True)
            ],
            inference_ms=per_image_ms,
            jobs=[job for job, _ in ready],
        )
    except Exception as exc:
        # Nothing of the batch was written (one transaction): no job may stay "running".
        for job, _ in ready:
            job_fail(job, exc)
    else:
        # Candidates of the task predict in shadow on the same scans (stored apart, shown to nobody).
        shadow_after_batch(scans=[job.scan for job, _ in ready])


def _infer_and_store(batch: _Batch) -> None:
    result = _infer(batch)
    if result is not None:
        _store(batch, *result)


class _Pipeline:
    """Batches of one task back to back, in three stages: while the network runs batch
    k in this thread, one helper thread claims batch k+1 (one statement) and decodes it,
    and another encodes the heat maps of batch k-1 and stores its rows (one
    transaction), so the network waits neither for storage, decryption and decoding
    nor for the database. At most one batch waits in each stage. It stops when nothing
    is waiting, after INFERENCE_DRAIN_S, or when another batch could not be stored by
    half the task's soft time limit, leaving the rest to the other workers' messages
    (a task that runs out of time anyway leaves its jobs to the sweeper, not failed). Should the process die,
    the jobs of all three batches are running under its name: the sweeper (or the next
    worker on this host) puts them back, and they then run alone."""

    def __init__(self, *, task: str, me: str, limit: int) -> None:
        self.task, self.me, self.limit = task, me, limit
        self.started = time.monotonic()
        self.drain_until = self.started + settings.INFERENCE_DRAIN_S
        # Everything claimed must be stored by half the soft time limit, with room to spare.
        self.finish_by = self.started + settings.CELERY_TASK_SOFT_TIME_LIMIT / 2
        self.batch_s = 0.0  # the slowest batch so far, through the network

    def may_claim(self) -> bool:
        """Another batch, if the queue is still being drained and it (through decoding,
        the network and storing: three batch times) would end by `finish_by`."""
        now = time.monotonic()
        return now < self.drain_until and now + 3 * self.batch_s < self.finish_by

    def _next(self, decode_pool: ThreadPoolExecutor) -> tuple[bool, _Batch | None]:
        ids = _claim_batch(task=self.task, me=self.me, limit=self.limit)
        return bool(ids), (_prepare(ids, decode_pool) if ids else None)

    def run(self, first_ids: list[int]) -> None:
        if connection.in_atomic_block or connection.vendor != "postgresql":
            # Called inside a transaction (not a worker's task): helper threads, with
            # their own connections, would not see its rows; or on the demo's SQLite,
            # where their writes would wait on each other's lock. Everything in this thread.
            with ThreadPoolExecutor(max_workers=settings.INFERENCE_DECODE_THREADS) as decode_pool:
                current, claimed_more = _prepare(first_ids, decode_pool), True
                while current is not None or claimed_more:
                    if current is not None:
                        began = time.monotonic()
                        _infer_and_store(current)
                        self.batch_s = max(self.batch_s, time.monotonic() - began)
                    if not self.may_claim():
                        return
                    claimed_more, current = self._next(decode_pool)
            return
        with (
            ThreadPoolExecutor(max_workers=settings.INFERENCE_DECODE_THREADS) as decode_pool,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-ahead") as ahead,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-behind") as behind,
        ):
            storing: Future[None] | None = None
            try:
                current = _prepare(first_ids, decode_pool)
                claimed_more = True
                while current is not None or claimed_more:
                    upcoming = ahead.submit(self._next, decode_pool) if self.may_claim() else None
                    if current is not None:
                        result = _infer(current)
                        if result is not None:
                            self.batch_s = max(self.batch_s, result[1])
                        if storing is not None:
                            storing.result()  # one batch waiting to be stored at most
                        storing = behind.submit(_store, current, *result) if result is not None else None
                    if upcoming is None:
                        break
                    claimed_more, current = upcoming.result()
                if storing is not None:
                    storing.result()
            finally:
                # Each helper thread's own database connection goes with it.
                ahead.submit(connections.close_all).result()
                behind.submit(connections.close_all).result()


def jobs_process(*, job_ids: list[int]) -> None:
    """Decode, predict (with heat maps) in one compiled call and store the results of
    claimed jobs of one task, as one batch."""
    with ThreadPoolExecutor(max_workers=settings.INFERENCE_DECODE_THREADS) as decode_pool:
        batch = _prepare(job_ids, decode_pool)
    if batch is not None:
        _infer_and_store(batch)


def _build_prediction(job: InferenceJob, model_version: ModelVersion, outcome: JobOutcome, ms: float) -> Prediction:
    heatmap_name = ""
    if outcome.heatmap_png is not None:
        heatmap_name, _ = storage.store_bytes(
            data=outcome.heatmap_png, sha256=storage.sha256_bytes(outcome.heatmap_png)
        )
    return prediction_new(
        job=job,
        model_version=model_version,
        probabilities=outcome.probabilities,
        inference_ms=ms,
        out_of_distribution=bool(outcome.ood_reasons),
        ood_reasons=list(outcome.ood_reasons),
        ood_score=outcome.ood_score,
        heatmap_storage_name=heatmap_name,
    )


def _finish_sql() -> str:
    job, prediction = InferenceJob._meta.db_table, Prediction._meta.db_table
    return f"""
        UPDATE {job} AS j SET status = %(succeeded)s, finished_at = %(now)s, updated_at = %(now)s, error = ''
        WHERE j.id = ANY(%(ids)s) AND j.status = %(running)s
          AND NOT EXISTS (SELECT 1 FROM {prediction} p WHERE p.job_id = j.id)
        RETURNING j.id
    """  # noqa: S608  # table names from the models' own metadata; every value is a parameter


def predictions_store(
    *,
    model_version: ModelVersion,
    outcomes: list[JobOutcome],
    inference_ms: float,
    jobs: list[InferenceJob] | None = None,
) -> list[Prediction]:
    """Record a batch of predictions and queue them for review, in ONE transaction.

    Per-prediction transactions with full uniqueness checks cost more than the network
    at batch 8 (bench/), so: one UPDATE ... RETURNING locks the batch's jobs and marks
    those still running and without a prediction as succeeded; fields are validated
    without the redundant unique queries (the OneToOne constraints on job and scan still
    hold in the database and catch a concurrent duplicate); predictions, review items
    and the audit events (one INSERT each, the audit chain's head locked once) follow in
    the same transaction. `jobs`, when the caller has them loaded with their scans and
    cases (the worker has), saves reading them again."""
    by_job = {o.job_id: o for o in outcomes}
    try:
        with transaction.atomic():
            finished = timezone.now()
            with connection.cursor() as cursor:
                params: dict[str, Any] = {
                    "succeeded": InferenceJob.Status.SUCCEEDED,
                    "running": InferenceJob.Status.RUNNING,
                    "now": finished,
                    "ids": list(by_job),
                }
                if connection.vendor == "postgresql":
                    cursor.execute(_finish_sql(), params)
                    finishing = {row[0] for row in cursor.fetchall()}
                else:  # the demo's SQLite: the transaction holds the database's write lock
                    pending = InferenceJob.objects.filter(
                        id__in=by_job, status=InferenceJob.Status.RUNNING, prediction__isnull=True
                    )
                    finishing = set(pending.values_list("id", flat=True))
                    InferenceJob.objects.filter(id__in=finishing).update(
                        status=InferenceJob.Status.SUCCEEDED, finished_at=finished, updated_at=finished, error=""
                    )
            # A job that is no longer running, or already has its prediction, was finished
            # by a duplicate delivery: a quiet no-op for that job.
            if not finishing:
                return []
            known = {j.id: j for j in jobs or [] if j.id in finishing}
            if len(known) < len(finishing):
                missing = finishing - set(known)
                known.update(
                    (j.id, j) for j in InferenceJob.objects.select_related("scan", "scan__case").filter(id__in=missing)
                )
            batch = [known[job_id] for job_id in sorted(finishing)]
            predictions = []
            for job in batch:
                prediction = _build_prediction(job, model_version, by_job[job.id], inference_ms)
                # Field checks yes; not the FK existence queries (3 per row: the job and scan
                # were just locked, the model version is loaded) nor the unique queries: the
                # database's FK and unique constraints still hold them.
                prediction.full_clean(
                    exclude=["job", "scan", "model_version"], validate_unique=False, validate_constraints=False
                )
                predictions.append(prediction)
            Prediction.objects.bulk_create(predictions)
            ReviewItem.objects.bulk_create([ReviewItem(prediction=p) for p in predictions])
            worklists_changed(unit_ids=[job.scan.case.unit_id for job in batch])
            transaction.on_commit(partial(_succeeded_here.add, sorted(finishing)))
            audit_record_many(
                actor=None,
                entries=[
                    AuditEntry(
                        action="prediction.create",
                        obj=prediction,
                        data={
                            "model": str(model_version),
                            "predicted": prediction.predicted_label,
                            "uncertain": prediction.uncertain,
                            "out_of_distribution": prediction.out_of_distribution,
                            "scan": str(prediction.scan.uuid),
                        },
                    )
                    for prediction in predictions
                ],
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
                for p in predictions_store(
                    model_version=model_version, outcomes=[o], inference_ms=inference_ms, jobs=jobs
                )
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


def worker_device_record(*, hostname: str, device: str, backend: str, precision: str) -> None:
    """Where a worker's network runs, for /health/ and /metrics (no clinical data)."""
    WorkerHeartbeat.objects.update_or_create(
        hostname=hostname[:255],
        defaults={"device": device[:120], "backend": backend[:20], "precision": precision[:10]},
        create_defaults={
            "pid": os.getpid(),
            "device": device[:120],
            "backend": backend[:20],
            "precision": precision[:10],
        },
    )
