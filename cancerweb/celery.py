"""The Celery application and the project's task decorator. Configuration comes from
Django settings (CELERY_*); the worker's signal handlers live in diagnostics/worker.py."""

from __future__ import annotations

import os

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

# The demo's filesystem broker, with atomic message writes (see cancerweb/broker.py).
TRANSPORT_ALIASES["filesystem"] = "cancerweb.broker:Transport"

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cancerweb.settings")

app = Celery("cancerweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,
    # At-least-once delivery: acknowledge after the task ran, give the message back
    # when the worker process dies, and take one message at a time.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="default",
    broker_connection_retry_on_startup=True,
    # Keep reconnecting through a long broker outage instead of exiting after 100 tries.
    broker_connection_max_retries=None,
    # A task running when the broker connection drops finishes and writes its result to
    # the database; the broker's redelivery of its message is then a quiet no-op.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_hijack_root_logger=False,
    # Each pool child loads the models before it takes a task (diagnostics/worker.py);
    # give it time to do so instead of the default 4 s.
    worker_proc_alive_timeout=120,
)
app.autodiscover_tasks()


def project_task(*, queue: str, name: str):
    """The one task decorator of the project (bare ``shared_task`` is banned by ruff).

    Late acknowledgement and reject-on-worker-loss give at-least-once delivery, so
    every task must be idempotent. No automatic retry on exceptions: the job row in
    the database decides whether work is left, not the broker.
    """
    from django.conf import settings

    return app.task(
        name=name,
        queue=queue,
        acks_late=True,
        reject_on_worker_lost=True,
        time_limit=settings.CELERY_TASK_HARD_TIME_LIMIT,
        soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
        serializer="json",
        ignore_result=True,
        autoretry_for=(),
    )
