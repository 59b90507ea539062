"""Fault injection: kill pool children and whole workers mid-inference, restart Redis
and PostgreSQL under a stream of uploads, deliver every message several times to two
workers. Each test ends by checking every accepted upload: exactly one prediction and
one review item, no duplicates, no orphan files; and prints its figures."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from datetime import datetime, timedelta

import pytest
from django.db import InterfaceError, OperationalError, close_old_connections
from django.db.models import Count
from django.utils import timezone

from diagnostics.intake import storage
from diagnostics.models import Case, InferenceJob, Prediction, ReviewItem, Scan
from diagnostics.services.cases import IncomingFile, case_create, scans_upload
from diagnostics.tasks import run_inference_task
from tests.faults_tests.conftest import RUNNING_DEADLINE_S, Stack
from tests.helpers import image_bytes

# One xdist process runs these one after another (bin/test runs the suite in two):
# each starts its own PostgreSQL, Redis and workers, and two at once would starve the
# machine's two cores and the slow model's timing.
pytestmark = [pytest.mark.faults, pytest.mark.xdist_group("faults")]

_colors = itertools.count(1)


def _new_case(stack: Stack, ref: str) -> Case:
    assert stack.clinician is not None
    return case_create(acting_user=stack.clinician, patient_ref=ref, body_site="lymph node")


def _upload(stack: Stack, case: Case, n: int) -> list[int]:
    """n distinct images, one upload each; returns the accepted scans' ids."""
    assert stack.clinician is not None
    ids = []
    for _ in range(n):
        i = next(_colors)
        data = image_bytes(color=(i % 251, (i // 251) % 251, 90))
        result = scans_upload(acting_user=stack.clinician, case=case, files=[IncomingFile(name=f"s{i}.png", data=data)])
        assert len(result.created) == 1
        ids.append(result.created[0].id)
    return ids


def _wait_done(scan_ids: list[int], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        close_old_connections()
        statuses = dict(
            InferenceJob.objects.filter(scan_id__in=scan_ids)
            .values("status")
            .annotate(n=Count("id"))
            .values_list("status", "n")
        )
        if statuses.get("succeeded", 0) == len(scan_ids):
            return
        if statuses.get("failed") or time.monotonic() > deadline:
            return  # the outcome check below reports what is missing
        time.sleep(0.5)


def _running_job(scan_ids: list[int], exclude: set[int], *, min_age_s: float) -> InferenceJob | None:
    """A first attempt in progress for at least min_age_s: the worker is mid-inference."""
    cutoff = timezone.now() - timedelta(seconds=min_age_s)
    return (
        InferenceJob.objects.filter(scan_id__in=scan_ids, status="running", attempts=1, started_at__lte=cutoff)
        .exclude(id__in=exclude)
        .first()
    )


def _wait_for(fn, *, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _outcome(stack: Stack, scan_ids: list[int]) -> dict[str, int]:
    predictions = dict(
        Prediction.objects.filter(scan_id__in=scan_ids)
        .values("scan_id")
        .annotate(n=Count("id"))
        .values_list("scan_id", "n")
    )
    items = dict(
        ReviewItem.objects.filter(prediction__scan_id__in=scan_ids)
        .values("prediction__scan_id")
        .annotate(n=Count("id"))
        .values_list("prediction__scan_id", "n")
    )
    lost = sum(1 for s in scan_ids if predictions.get(s, 0) == 0 or items.get(s, 0) == 0)
    duplicated = sum(max(0, n - 1) for n in predictions.values()) + sum(max(0, n - 1) for n in items.values())
    # Stored objects: scans, and the heat maps the worker stores with predictions.
    referenced = set(Scan.objects.values_list("storage_name", flat=True)) | set(
        Prediction.objects.exclude(heatmap_storage_name="").values_list("heatmap_storage_name", flat=True)
    )
    # Listed through the storage API, so the same check holds on an object store.
    on_disk = set(storage.iter_object_names())
    return {
        "accepted": len(scan_ids),
        "lost": lost,
        "duplicated": duplicated,
        "orphan_files": len(on_disk - referenced),
        "missing_files": len(referenced - on_disk),
        # Why jobs failed, if any did (job errors hold no clinical data).
        "errors": sorted(
            set(InferenceJob.objects.filter(scan_id__in=scan_ids, status="failed").values_list("error", flat=True))
        ),
    }


def _report(capsys: pytest.CaptureFixture[str], fault: str, runs: int, out: dict[str, int], recover_s: float,
            **extra: object) -> None:  # fmt: skip
    line = (
        f"FAULT {fault}: runs={runs} accepted={out['accepted']} lost={out['lost']} duplicated={out['duplicated']} "
        f"orphan_files={out['orphan_files']} longest_recovery_s={recover_s:.1f}"
    )
    line += "".join(f" {k}={v}" for k, v in extra.items())
    with capsys.disabled():
        print(f"\n{line}")
    if out.get("errors"):
        line += f" errors={out['errors']}"
    assert out == {**out, "lost": 0, "duplicated": 0, "orphan_files": 0, "missing_files": 0}, line


def _recovery(kills: dict[int, datetime]) -> float:
    finished = dict(InferenceJob.objects.filter(id__in=kills).values_list("id", "finished_at"))
    return max((finished[j] - t).total_seconds() for j, t in kills.items() if finished[j] is not None)


def test_sigkill_the_pool_child_mid_inference_20_times(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    runs = 20
    stack.use_model("slow")
    worker = stack.start_worker(name="pool")
    back_in_service = 0.0
    try:
        case = _new_case(stack, "PSN-F-POOL")
        # A steady stream, two scans ahead of the worker, so the figures measure
        # recovery rather than the wait behind a long queue.
        ids = _upload(stack, case, 2)
        kills: dict[int, datetime] = {}
        while len(kills) < runs:
            job = _wait_for(lambda: _running_job(ids, set(kills), min_age_s=0.3), timeout=300, what="a running job")
            children = stack.pool_children(worker)
            assert len(children) == 1, children  # -c 1: the one pool child runs this job
            os.kill(children[0], signal.SIGKILL)
            killed_at = timezone.now()
            kills[job.id] = killed_at
            ids.extend(_upload(stack, case, 1))
            # A new pool child claims work again (the killed job, taken over at once,
            # or the next one).
            _wait_for(
                lambda: InferenceJob.objects.filter(scan_id__in=ids, started_at__gt=killed_at).exists(),  # noqa: B023
                timeout=300,
                what="a new claim",
            )
            back_in_service = max(back_in_service, (timezone.now() - killed_at).total_seconds())
        _wait_done(ids, timeout=600)
        assert worker.poll() is None  # the main process replaced its child by itself
        out = _outcome(stack, ids)
        recover = _recovery(kills) if out["lost"] == 0 else float("nan")
    finally:
        stack.stop_workers()
    _report(capsys, "pool child SIGKILL", runs, out, recover, longest_until_next_claim_s=f"{back_in_service:.1f}")


def test_sigkill_the_whole_worker_mid_inference_10_times(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    runs = 10
    stack.use_model("slow")
    try:
        case = _new_case(stack, "PSN-F-WORKER")
        ids = _upload(stack, case, 1)
        kills: dict[int, datetime] = {}
        for i in range(runs):
            if i:
                ids.extend(_upload(stack, case, 1))  # a steady stream, one scan per worker life
            worker = stack.start_worker(name=f"whole{i}")
            job = _wait_for(lambda: _running_job(ids, set(kills), min_age_s=0.3), timeout=300, what="a running job")
            stack.kill_worker(worker, signal.SIGKILL)  # main process and pool child together
            kills[job.id] = timezone.now()
        stack.start_worker(name="whole-last")
        _wait_done(ids, timeout=600)
        out = _outcome(stack, ids)
        recover = _recovery(kills) if out["lost"] == 0 else float("nan")
    finally:
        stack.stop_workers()
    _report(capsys, "whole worker SIGKILL", runs, out, recover, running_deadline_s=RUNNING_DEADLINE_S)


def test_restart_redis_under_a_stream_of_uploads_10_times(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    runs = 10
    slowest_upload = 0.0
    longest = 0.0
    stack.use_model("demo")
    stack.start_worker(name="redis")
    try:
        case = _new_case(stack, "PSN-F-REDIS")
        ids: list[int] = []
        for i in range(runs):
            ids += _upload(stack, case, 1)
            started = time.monotonic()
            stack.redis_kill(signal.SIGTERM if i % 2 == 0 else signal.SIGKILL)
            for _ in range(2):  # accepted while Redis is down; they wait in the database
                t = time.monotonic()
                ids += _upload(stack, case, 1)
                slowest_upload = max(slowest_upload, time.monotonic() - t)
            time.sleep(1)
            stack.redis_start()
            ids += _upload(stack, case, 1)
            _wait_done(ids, timeout=300)
            longest = max(longest, time.monotonic() - started)
        out = _outcome(stack, ids)
        assert stack.workers[0].poll() is None  # the same worker reconnected by itself
    finally:
        stack.stop_workers()
    _report(capsys, "redis restart", runs, out, longest, slowest_upload_while_down_s=f"{slowest_upload:.1f}")


def test_restart_postgresql_under_load_3_times(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    runs = 3
    refused = 0
    longest = 0.0
    stack.use_model("slow")  # keeps work in flight across the restart
    stack.start_worker(name="pg")
    try:
        case = _new_case(stack, "PSN-F-PG")
        ids: list[int] = []
        for _ in range(runs):
            restarted = threading.Event()

            def restart(restarted: threading.Event = restarted) -> None:
                time.sleep(1.5)
                stack.pg_stop("fast")
                time.sleep(3)
                stack.pg_start()
                restarted.set()

            thread = threading.Thread(target=restart)
            thread.start()
            started = time.monotonic()
            until = None
            while until is None or time.monotonic() < until:
                close_old_connections()
                try:
                    ids += _upload(stack, case, 1)
                except (OperationalError, InterfaceError):
                    refused += 1  # refused while the database is down; nothing may remain of it
                if restarted.is_set() and until is None:
                    until = time.monotonic() + 2
                time.sleep(0.2)
            thread.join()
            close_old_connections()
            _wait_done(ids, timeout=300)
            longest = max(longest, time.monotonic() - started)
        close_old_connections()
        out = _outcome(stack, ids)
        assert all(w.poll() is None for w in stack.workers)  # no worker needed a restart by hand
    finally:
        stack.stop_workers()
    assert refused > 0, "the database outage did not hit any upload"
    _report(capsys, "postgresql restart", runs, out, longest, uploads_refused_while_down=refused)


def test_duplicated_messages_on_two_workers_give_one_outcome(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    copies = 4
    stack.use_model("demo")
    stack.start_worker(name="dup1", wait_ready=False)
    stack.start_worker(name="dup2")
    try:
        ids = _upload(stack, _new_case(stack, "PSN-F-DUP"), 8)
        started = time.monotonic()
        for job_id in InferenceJob.objects.filter(scan_id__in=ids).values_list("id", flat=True):
            for _ in range(copies - 1):  # the upload sent one; the broker "redelivers" the rest
                run_inference_task.delay(job_id=job_id)
        _wait_done(ids, timeout=600)
        out = _outcome(stack, ids)
        attempts = set(InferenceJob.objects.filter(scan_id__in=ids).values_list("attempts", flat=True))
    finally:
        stack.stop_workers()
    assert attempts == {1}  # every copy but one found the job claimed and did nothing
    _report(capsys, f"duplicate delivery ({copies} copies of each message, 2 workers)", 1, out,
            time.monotonic() - started)  # fmt: skip
