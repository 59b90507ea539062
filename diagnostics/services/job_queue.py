"""Putting inference jobs on the broker, failing them with a stated reason, and the model
a job runs through: shared by the image batches (services/jobs.py) and whole slides
(services/slides.py)."""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.db.models import F
from django.db.models.functions import Greatest
from django.utils import timezone

from cancerweb.celery import app as celery_app
from diagnostics.intake import storage
from diagnostics.models import Case, InferenceJob, ModelVersion, Prediction
from diagnostics.services.worklists import worklists_changed

logger = logging.getLogger(__name__)


# The task's registered name (diagnostics/tasks.py registers it under this name). Sent
# by name so this module does not import the task module that imports it.
RUN_INFERENCE_TASK = "diagnostics.run_inference"
INFERENCE_QUEUE = "inference"


def job_enqueue(job: InferenceJob) -> None:
    """Send the job to the workers once the current transaction commits: the worker must
    find the rows, and a rolled-back upload must not leave a message behind."""
    job_id = job.id
    transaction.on_commit(lambda: job_send(job_id))


def job_send(job_id: int, *, countdown: float | None = None) -> None:
    """Publish the job's id (never image bytes or patient data). A broker that is down
    costs the caller about 1.5 s (the publish retry policy); the job row stays queued and
    the sweeper sends it again later."""
    try:
        celery_app.send_task(RUN_INFERENCE_TASK, kwargs={"job_id": job_id}, queue=INFERENCE_QUEUE, countdown=countdown)
    except Exception:  # broker down: the job row stays queued for the sweeper
        logger.warning("could not enqueue inference job %s; it stays queued", job_id, exc_info=True)


class JobError(Exception):
    """A reason a job cannot succeed, phrased for the job's error field."""


def job_fail(job: InferenceJob, exc: Exception) -> None:
    """Fail a running job with a reason for its error field (never patient data)."""
    if isinstance(exc, OperationalError | InterfaceError | SoftTimeLimitExceeded):
        # The database went away, or the task ran out of time (a database outage stalled
        # it), not the job: it stays running and the sweeper puts it back in the queue
        # after the running deadline (and fails it with that reason after its last attempt).
        raise exc
    if isinstance(exc, storage.StorageUnavailable):
        # The image store is down or restarting, not the job: back to the queue without
        # spending an attempt, sent again after a pause (and by the sweeper, should this
        # message be lost). /health/ reports the store meanwhile.
        logger.warning("inference job %s waits for the image store: %s", job.uuid, exc.reason)
        now = timezone.now()
        if InferenceJob.objects.filter(id=job.id, status=InferenceJob.Status.RUNNING).update(
            status=InferenceJob.Status.QUEUED, attempts=Greatest(F("attempts") - 1, 0), updated_at=now
        ):
            job_send(job.id, countdown=settings.STORAGE_RETRY_DELAY_S)
        return
    reason = str(exc) if isinstance(exc, JobError) else f"inference failed: {type(exc).__name__}"
    logger.warning("inference job %s failed: %s", job.uuid, reason)
    now = timezone.now()
    if InferenceJob.objects.filter(id=job.id, status=InferenceJob.Status.RUNNING).update(
        status=InferenceJob.Status.FAILED, error=reason, finished_at=now, updated_at=now
    ):
        worklists_changed(unit_ids=Case.objects.filter(scans__job__id=job.id).values_list("unit_id", flat=True))


def active_model_for_task(task: str) -> ModelVersion:
    """The model a job of this task runs through, or a JobError saying why there is none."""
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


def prediction_new(
    *, job: InferenceJob, model_version: ModelVersion, probabilities: list[float], inference_ms: float, **fields: Any
) -> Prediction:
    """An unsaved prediction of ``job`` by ``model_version`` (images and slides alike):
    the top stage, its rank, confidence and the uncertain flag from the probabilities,
    which must be one per label; ``fields`` are the rest (heat map, slide map, ...)."""
    labels = list(model_version.labels)
    if len(probabilities) != len(labels):
        raise JobError(f"model returned {len(probabilities)} probabilities for {len(labels)} labels")
    index = max(range(len(labels)), key=lambda i: probabilities[i])
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
        input_sha256=job.scan.sha256,
        inference_ms=inference_ms,
        **fields,
    )
