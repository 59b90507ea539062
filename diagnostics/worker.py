"""Celery worker signal handlers: what a worker process does around its tasks (a fresh
database connection per task, Keras and its backend imported before the pool forks, a
bfloat16 setting checked, the active
models loaded when a pool child starts, a heartbeat for /health/). Connected from
DiagnosticsConfig.ready(), which Celery's Django fixup runs before the worker starts."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import signals
from django.conf import settings
from django.db import close_old_connections, connections

logger = logging.getLogger(__name__)

_heartbeat_stop = threading.Event()
_worker_hostname: str | None = None


def close_stale_connections(**kwargs: Any) -> None:
    # A worker outlives database restarts: drop connections that went stale or broke,
    # so the task opens a fresh one instead of failing on a dead socket.
    close_old_connections()


def check_storage(**kwargs: Any) -> None:
    # Before the worker takes any job: a bucket that does not exist or refused
    # credentials stop it with the reason, instead of failing every job later.
    from django.core import checks
    from django.core.exceptions import ImproperlyConfigured

    serious = [m for m in checks.run_checks(tags=["storage"]) if m.is_serious()]
    if serious:
        raise ImproperlyConfigured("; ".join(f"{m.msg} ({m.hint})" for m in serious))


def import_ml_stack(sender: Any = None, **kwargs: Any) -> None:
    # In the worker's main process, before it forks its pool: import Keras and its
    # backend (TensorFlow, or JAX with KERAS_BACKEND=jax; no model, no op, so JAX has
    # not started its runtime and forking after the import is safe), so a pool child
    # that replaces a dead one starts in seconds instead of re-importing them.
    global _worker_hostname
    _worker_hostname = getattr(sender, "hostname", None) or f"worker@{os.uname().nodename}"
    try:
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow  # noqa: F401

        import diagnostics.ml.runner  # noqa: F401
    except ImportError:  # a worker without the ML stack serves only the default queue
        logger.warning("the Keras backend is not importable in this worker")


def check_precision(**kwargs: Any) -> None:
    # CANCERWEB_INFERENCE_PRECISION=bfloat16 is refused at start-up when it moves the
    # active models' outputs on their check images beyond the stated tolerance.
    from django.core.exceptions import ImproperlyConfigured

    from diagnostics.inference import precision_check

    try:
        problems = precision_check()
    finally:
        connections.close_all()  # the pool children open their own
    if problems:
        raise ImproperlyConfigured(
            "bfloat16 refused (set CANCERWEB_INFERENCE_PRECISION=float32): " + "; ".join(problems)
        )


def _record_device(runners: list[Any]) -> None:
    from diagnostics.ml.runner import backend_name, describe_device
    from diagnostics.services.jobs import worker_device_record

    device = runners[0].device if runners else describe_device()
    backend = runners[0].backend if runners else backend_name()
    if device == "cpu":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        logger.warning(
            "no GPU is visible to this worker (Keras backend %s, CUDA_VISIBLE_DEVICES=%s): the network runs on CPU",
            backend,
            visible,
        )
    else:
        logger.info("this worker's network runs on %s (Keras backend %s)", device, backend)
    worker_device_record(
        hostname=_worker_hostname or f"worker@{os.uname().nodename}",
        device=device,
        backend=backend,
        precision=settings.INFERENCE_PRECISION,
    )


def warm_models(**kwargs: Any) -> None:
    # Load the active models when a pool child starts, not inside its first task: the
    # first task then takes as long as any other, well inside the time limits and the
    # sweeper's running deadline. Then say where the network runs (/health/, /metrics).
    from diagnostics.inference import runner_for
    from diagnostics.models import ModelVersion

    runners = []
    try:
        for active in ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).order_by("task"):
            runners.append(runner_for(active))
    except Exception:  # no database yet, or a bad bundle: the task reports it on the job
        logger.warning("could not load the active models at worker start", exc_info=True)
    try:
        _record_device(runners)
    except Exception:
        logger.warning("could not record this worker's device", exc_info=True)
    finally:
        # Never share a connection opened here with the task code's own.
        connections.close_all()


def _heartbeat_loop(hostname: str, stop: threading.Event) -> None:
    from diagnostics.services.jobs import worker_heartbeat

    while True:
        try:
            worker_heartbeat(hostname=hostname, pid=os.getpid())
        except Exception:  # the database may be restarting; beat again next time
            logger.warning("worker heartbeat could not be written", exc_info=True)
            close_old_connections()
        if stop.wait(settings.WORKER_HEARTBEAT_S):
            return


def start_heartbeat(sender: Any = None, **kwargs: Any) -> None:
    # In the worker's main process: it lives as long as the worker does, whatever
    # happens to the pool children.
    hostname = getattr(sender, "hostname", None) or f"worker@{os.uname().nodename}"
    threading.Thread(target=_heartbeat_loop, args=(hostname, _heartbeat_stop), daemon=True, name="heartbeat").start()


def stop_heartbeat(**kwargs: Any) -> None:
    _heartbeat_stop.set()


def connect() -> None:
    """Connect the handlers once per process (dispatch_uid makes a second call a no-op)."""
    signals.task_prerun.connect(close_stale_connections, dispatch_uid="cancerweb_close_stale_connections")
    signals.worker_init.connect(check_storage, dispatch_uid="cancerweb_check_storage")
    signals.worker_init.connect(import_ml_stack, dispatch_uid="cancerweb_import_ml_stack")
    signals.worker_init.connect(check_precision, dispatch_uid="cancerweb_check_precision")
    signals.worker_process_init.connect(warm_models, dispatch_uid="cancerweb_warm_models")
    signals.worker_ready.connect(start_heartbeat, dispatch_uid="cancerweb_start_heartbeat")
    signals.worker_shutdown.connect(stop_heartbeat, dispatch_uid="cancerweb_stop_heartbeat")
