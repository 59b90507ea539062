"""Health (/health/) and Prometheus metrics (/metrics) for operators and probes.

Both answer only aggregates and infrastructure state, never clinical data. Every
figure is read from the database at request time, not kept in process memory, so
it is the same whichever web process answers and counts the work of every worker.

Who may read them: requests from this machine (loopback address, no proxy header),
or any request carrying `Authorization: Bearer <CANCERWEB_MONITORING_TOKEN>`.
Everyone else gets 403.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from diagnostics.intake import storage
from diagnostics.models import InferenceJob
from diagnostics.selectors.drift import drift_status_all
from diagnostics.selectors.monitoring import (
    job_counts,
    latest_heartbeat_age_s,
    live_workers,
    oldest_queued_age_s,
    stuck_running_count,
)

# Seconds from upload to a stored prediction; a healthy queue answers in seconds,
# a backlog or a sweeper recovery in minutes.
LATENCY_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def monitoring_allowed(request: HttpRequest) -> bool:
    token = settings.MONITORING_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].encode(), token.encode()):
        return True
    # A reverse proxy on this machine also connects from loopback: it adds a
    # forwarding header, and such requests need the token.
    if request.META.get("HTTP_X_FORWARDED_FOR") or request.META.get("HTTP_FORWARDED"):
        return False
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def _forbidden() -> JsonResponse:
    return JsonResponse(
        {"error": "forbidden: ask from this machine or send Authorization: Bearer <monitoring token>"}, status=403
    )


class CheckFailed(Exception):
    """A check that ran and found something wrong: its figures are still reported."""

    def __init__(self, reason: str, detail: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _check(name: str, results: dict[str, Any], fn: Any) -> None:
    started = time.perf_counter()
    try:
        detail = fn() or {}
        results[name] = {"ok": True, **detail}
    except CheckFailed as exc:  # our own reason, no data in it
        results[name] = {"ok": False, "error": exc.reason, **exc.detail}
    except Exception as exc:  # report the kind of failure, never its text (may hold data)
        results[name] = {"ok": False, "error": type(exc).__name__}
    results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _broker() -> None:
    from cancerweb.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _storage() -> None:
    # Write, read back and delete a probe file: proves the store is writable, not just present.
    store = storage.scan_storage()
    name = store.save(f"health/probe-{uuid.uuid4().hex}", ContentFile(b"ok"))
    try:
        with store.open(name, "rb") as fh:
            if fh.read() != b"ok":
                raise OSError("probe read back different bytes")
    finally:
        store.delete(name)


def _worker() -> dict[str, Any]:
    age = latest_heartbeat_age_s()
    if age is None or age > 3 * settings.WORKER_HEARTBEAT_S:
        raise TimeoutError("no worker heartbeat")
    return {"heartbeat_age_s": round(age, 1), "workers": live_workers(within_s=3 * settings.WORKER_HEARTBEAT_S)}


def _queue() -> dict[str, Any]:
    counts = job_counts()
    age = oldest_queued_age_s()
    detail = {
        "depth": counts["queued"],
        "running": counts["running"],
        "running_past_deadline": stuck_running_count(),
        "running_deadline_s": settings.JOB_RUNNING_DEADLINE_S,
        "oldest_queued_age_s": round(age, 1),
        "max_queued_age_s": settings.HEALTH_MAX_QUEUED_AGE_S,
    }
    if age > settings.HEALTH_MAX_QUEUED_AGE_S:
        raise CheckFailed("oldest queued job is too old", detail)
    if detail["running_past_deadline"]:
        # The sweeper should have put them back in the queue: it is not running, or
        # it cannot (the database refuses its writes).
        raise CheckFailed("jobs running past their deadline (is the sweeper running?)", detail)
    return detail


@require_GET
@never_cache
def health(request: HttpRequest) -> HttpResponse:
    if not monitoring_allowed(request):
        return _forbidden()
    checks: dict[str, Any] = {}
    _check("database", checks, _database)
    _check("broker", checks, _broker)
    _check("storage", checks, _storage)
    if checks["database"]["ok"]:
        _check("worker", checks, _worker)
        _check("queue", checks, _queue)
    else:
        checks["worker"] = checks["queue"] = {"ok": False, "error": "database unavailable"}
    healthy = all(c["ok"] for c in checks.values())
    return JsonResponse({"status": "ok" if healthy else "unhealthy", "checks": checks}, status=200 if healthy else 503)


class JobCollector:
    """Reads the job table at scrape time (see the module docstring)."""

    def collect(self) -> Any:
        counts = job_counts()
        jobs = GaugeMetricFamily("cancerweb_inference_jobs", "Inference jobs by status.", labels=["status"])
        for status, n in counts.items():
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily(
            "cancerweb_oldest_queued_job_age_seconds", "Age of the oldest queued inference job.", oldest_queued_age_s()
        )
        heartbeat = latest_heartbeat_age_s()
        yield GaugeMetricFamily(
            "cancerweb_worker_heartbeat_age_seconds",
            "Seconds since the most recent worker heartbeat (NaN: never).",
            float("nan") if heartbeat is None else heartbeat,
        )
        devices = GaugeMetricFamily(
            "cancerweb_worker_device",
            "Live workers (heartbeat within three periods) and where their network runs.",
            labels=["hostname", "device", "backend", "precision"],
        )
        for worker in live_workers(within_s=3 * settings.WORKER_HEARTBEAT_S):
            devices.add_metric(
                [worker["hostname"], worker["device"] or "unknown", worker["backend"], worker["precision"]], 1
            )
        yield devices
        latency = ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField())
        done = InferenceJob.objects.filter(status=InferenceJob.Status.SUCCEEDED, finished_at__isnull=False).annotate(
            latency=latency
        )
        aggregates = {
            f"le_{i}": Count("id", filter=Q(latency__lte=timedelta(seconds=b))) for i, b in enumerate(LATENCY_BUCKETS)
        }
        row = done.aggregate(total=Count("id"), latency_sum=Sum("latency"), **aggregates)
        total_seconds = row["latency_sum"].total_seconds() if row["latency_sum"] else 0.0
        buckets = [(str(b), row[f"le_{i}"]) for i, b in enumerate(LATENCY_BUCKETS)] + [("+Inf", row["total"])]
        yield HistogramMetricFamily(
            "cancerweb_inference_latency_seconds",
            "Seconds from upload to stored prediction, succeeded jobs.",
            buckets=buckets,
            sum_value=total_seconds,
        )


class DriftCollector:
    """The latest drift check of each active model version (computed by the periodic
    task, read here): each measure's value and whether it is past its threshold."""

    def collect(self) -> Any:
        value = GaugeMetricFamily(
            "cancerweb_model_drift", "Latest drift measure of an active model version.", labels=["model", "measure"]
        )
        alarm = GaugeMetricFamily(
            "cancerweb_model_drift_alarm", "1 when the measure is past its threshold.", labels=["model", "measure"]
        )
        for row in drift_status_all():
            if row.check is None:
                continue
            for name, m in row.check.measures.items():
                model = str(row.model_version)
                value.add_metric([model, name], float("nan") if m["value"] is None else float(m["value"]))
                alarm.add_metric([model, name], 1.0 if m["alarm"] else 0.0)
        yield value
        yield alarm


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    if not monitoring_allowed(request):
        return _forbidden()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector())
    registry.register(DriftCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
