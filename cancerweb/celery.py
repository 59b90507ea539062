"""The Celery application. Configuration comes from Django settings (CELERY_*)."""

from __future__ import annotations

import logging
import os
import threading

from celery import Celery, signals
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
    task_routes={"diagnostics.tasks.run_inference": {"queue": "inference"}},
    broker_connection_retry_on_startup=True,
    # Keep reconnecting through a long broker outage instead of exiting after 100 tries.
    broker_connection_max_retries=None,
    # A task running when the broker connection drops finishes and writes its result to
    # the database; the broker's redelivery of its message is then a quiet no-op.
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_hijack_root_logger=False,
    # Each pool child loads the model before it takes a task (see _warm_model below);
    # give it time to do so instead of the default 4 s.
    worker_proc_alive_timeout=120,
)
app.autodiscover_tasks()

logger = logging.getLogger(__name__)


@app.on_after_finalize.connect
def _schedule_sweeper(sender: Celery, **kwargs: object) -> None:
    # `celery beat` (or `worker -B`, as bin/demo does) sends the sweep task; the loop
    # command `manage.py sweep_jobs --loop` is the alternative when beat is not run.
    from django.conf import settings

    sender.conf.beat_schedule = {
        **settings.CELERY_BEAT_SCHEDULE,
        "sweep-inference-jobs": {"task": "diagnostics.sweep_jobs", "schedule": float(settings.JOB_SWEEP_INTERVAL_S)},
    }


@signals.task_prerun.connect
def _close_stale_connections(**kwargs: object) -> None:
    # A worker outlives database restarts: drop connections that went stale or broke,
    # so the task opens a fresh one instead of failing on a dead socket.
    from django.db import close_old_connections

    close_old_connections()


@signals.worker_init.connect
def _import_tensorflow(**kwargs: object) -> None:
    # In the worker's main process, before it forks its pool: import TensorFlow and
    # Keras (no model, no TF op: forking after a bare import is safe), so a pool child
    # that replaces a dead one starts in seconds instead of re-importing them.
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

        import diagnostics.ml.runner  # noqa: F401
    except ImportError:  # a worker without the ML stack serves only the default queue
        logger.warning("TensorFlow is not importable in this worker")


@signals.worker_process_init.connect
def _warm_model(**kwargs: object) -> None:
    # Load TensorFlow and the active model when a pool child starts, not inside its
    # first task: the first task then takes as long as any other, well inside the
    # time limits and the sweeper's running deadline.
    from django.db import connections

    try:
        from diagnostics.inference import runner_for
        from diagnostics.models import ModelVersion

        active = ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
        if active is not None:
            runner_for(active)
    except Exception:  # no database yet, or a bad bundle: the task reports it on the job
        logger.warning("could not load the active model at worker start", exc_info=True)
    finally:
        # Never share a connection opened here with the task code's own.
        connections.close_all()


def _heartbeat_loop(hostname: str, stop: threading.Event) -> None:
    from django.conf import settings
    from django.db import close_old_connections

    from diagnostics.services import worker_heartbeat

    while True:
        try:
            worker_heartbeat(hostname=hostname, pid=os.getpid())
        except Exception:  # the database may be restarting; beat again next time
            logger.warning("worker heartbeat could not be written", exc_info=True)
            close_old_connections()
        if stop.wait(settings.WORKER_HEARTBEAT_S):
            return


_heartbeat_stop = threading.Event()


@signals.worker_ready.connect
def _start_heartbeat(sender: object = None, **kwargs: object) -> None:
    # In the worker's main process: it lives as long as the worker does, whatever
    # happens to the pool children.
    hostname = getattr(sender, "hostname", None) or f"worker@{os.uname().nodename}"
    threading.Thread(target=_heartbeat_loop, args=(hostname, _heartbeat_stop), daemon=True, name="heartbeat").start()


@signals.worker_shutdown.connect
def _stop_heartbeat(**kwargs: object) -> None:
    _heartbeat_stop.set()


def project_task(*, queue: str, name: str):  # type: ignore[no-untyped-def]
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
