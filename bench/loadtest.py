"""Load test of the local cluster (bin/cluster) with Locust, bounded in users and time,
traffic to 127.0.0.1 only.

Clinicians create a case and upload distinct images; physicians poll the review
queue and sign; API clients poll their jobs. Three runs on one cluster:

  1. one worker host (the second one stopped),
  2. two worker hosts,
  3. two worker hosts, one killed (SIGKILL, whole host) a third of the way in and
     SeaweedFS killed and restarted once halfway: afterwards every accepted upload
     must have exactly one prediction and one review item (nothing lost, nothing
     duplicated), no job failed.

Printed per run: accepted uploads per second and errors, p50/p95/p99 per endpoint,
the queue drain rate (predictions stored per second, from the database), the time to
drain the backlog after the clients stop.

    nice -n 10 .venv/bin/python bench/loadtest.py [--seconds 60] [--clinicians 4] [--physicians 2] [--api 2]
        [--root DIR (an existing bin/cluster; default: start a fresh one and stop it after)]
"""

# ruff: noqa: I001  (locust must be imported first: it patches the standard library for gevent)
from __future__ import annotations

from typing import Any

import locust  # noqa: F401
import argparse
import io
import itertools
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gevent
import psycopg
from locust import HttpUser, between, events, task
from locust.env import Environment
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.cluster import Cluster  # noqa: E402

TASK = "Lymph-node metastasis in H&E patches"
_colors = itertools.count(1)
_lock = threading.Lock()


@dataclass
class Shared:
    cluster: Cluster | None = None
    accepted: list[str] = field(default_factory=list)  # scan ids the server accepted
    jobs: list[str] = field(default_factory=list)
    sign_races: int = 0  # two physicians signed the same item; the second is refused (correct)
    signed: int = 0


SHARED = Shared()


def png(i: int) -> bytes:
    img = Image.new("RGB", (96, 96), (i % 251, (i // 251) % 251, 90))
    for x in range(0, 96, 7):
        img.putpixel((x, (x * i) % 96), (10, 200, 30))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


class _ClusterUser(HttpUser):
    abstract = True
    host = "http://127.0.0.1"  # replaced per user with one of the web hosts
    _seq = itertools.count()
    role = ""

    def on_start(self) -> None:
        assert SHARED.cluster is not None
        n = next(self._seq)
        self.client.base_url = SHARED.cluster.web_urls[n % len(SHARED.cluster.web_urls)]
        tokens = list(SHARED.cluster.logins[f"{self.role}s"].values())
        self.client.headers["Authorization"] = f"Token {tokens[n % len(tokens)]}"


class Clinician(_ClusterUser):
    role = "clinician"
    wait_time = between(0.1, 0.3)  # faster than a person: the point is the throughput

    def on_start(self) -> None:
        super().on_start()
        response = self.client.post(
            "/api/v1/cases/", json={"patient_ref": f"PSN-LT-{next(_colors)}", "body_site": "lymph node", "task": TASK},
            name="POST /cases/",
        )  # fmt: skip
        self.case = response.json()["id"] if response.status_code == 201 else None

    @task
    def upload(self) -> None:
        if self.case is None:
            return self.on_start()
        i = next(_colors)
        response = self.client.post(
            f"/api/v1/cases/{self.case}/scans/", files=[("files", (f"s{i}.png", png(i), "image/png"))],
            name="POST /cases/{id}/scans/",
        )  # fmt: skip
        if response.status_code == 201:
            created = response.json()["created"][0]
            with _lock:
                SHARED.accepted.append(created["id"])
                SHARED.jobs.append(created["job"])


class Physician(_ClusterUser):
    role = "physician"
    wait_time = between(1.5, 2.5)  # the worklist polls every 2 s

    @task
    def review(self) -> None:
        queue = self.client.get("/api/v1/review-queue/?page_size=20", name="GET /review-queue/")
        if queue.status_code != 200 or not queue.json()["results"]:
            return
        item = random.choice(queue.json()["results"])  # noqa: S311
        with self.client.post(
            f"/api/v1/review-items/{item['id']}/decisions/",
            json={"outcome": "confirmed", "password": SHARED.cluster.logins["password"]},  # type: ignore[union-attr]  # set before users start
            name="POST /review-items/{id}/decisions/", catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code == 201:
                SHARED.signed += 1
            elif response.status_code == 400 and "already signed" in response.text:
                SHARED.sign_races += 1
                response.success()  # refused as it should be: another physician signed first


class ApiClient(_ClusterUser):
    role = "clinician"
    wait_time = between(1.5, 2.5)

    @task
    def poll(self) -> None:
        with _lock:
            recent = SHARED.jobs[-20:]
        if recent:
            self.client.get(f"/api/v1/jobs/{random.choice(recent)}/", name="GET /jobs/{id}/")  # noqa: S311
        else:
            self.client.get("/api/v1/jobs/?page_size=20", name="GET /jobs/")


def db(cluster: Cluster) -> psycopg.Connection:
    return psycopg.connect(cluster.database_url.replace("postgres://", "postgresql://"), autocommit=True)


def outcome(cluster: Cluster, scan_uuids: list[str]) -> dict[str, int]:
    with db(cluster) as conn:
        rows = conn.execute(
            """SELECT s.uuid::text, j.status,
                      (SELECT count(*) FROM diagnostics_prediction p WHERE p.scan_id = s.id),
                      (SELECT count(*) FROM diagnostics_reviewitem r JOIN diagnostics_prediction p
                         ON r.prediction_id = p.id WHERE p.scan_id = s.id)
               FROM diagnostics_scan s JOIN diagnostics_inferencejob j ON j.scan_id = s.id
               WHERE s.uuid = ANY(%s::uuid[])""",
            (scan_uuids,),
        ).fetchall()
    found = {r[0] for r in rows}
    return {
        "accepted": len(scan_uuids),
        "missing_rows": len(set(scan_uuids) - found),
        "lost": sum(1 for r in rows if r[2] == 0 or r[3] == 0) + len(set(scan_uuids) - found),
        "duplicated": sum(max(0, r[2] - 1) + max(0, r[3] - 1) for r in rows),
        "failed": sum(1 for r in rows if r[1] == "failed"),
        "done": sum(1 for r in rows if r[1] == "succeeded"),
    }


def predictions_between(cluster: Cluster, t0: float, t1: float) -> int:
    with db(cluster) as conn:
        row = conn.execute(
            "SELECT count(*) FROM diagnostics_prediction WHERE created_at >= to_timestamp(%s) AND "
            "created_at < to_timestamp(%s)",
            (t0, t1),
        ).fetchone()
    return int(row[0]) if row else 0


def wait_drained(cluster: Cluster, scans: list[str], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        out = outcome(cluster, scans)
        if out["done"] + out["failed"] >= len(scans):
            break
        time.sleep(1)
    return time.monotonic() - started


def run(cluster: Cluster, *, label: str, seconds: int, users: dict[Any, int], faults: bool = False) -> dict:
    SHARED.accepted.clear()
    SHARED.jobs.clear()
    SHARED.sign_races = SHARED.signed = 0
    for cls, count in users.items():
        cls.fixed_count = count  # exactly this many of each, not a weighted share
    env = Environment(user_classes=list(users), events=events)
    runner = env.create_local_runner()
    notes: list[str] = []
    total = sum(users.values())
    runner.start(user_count=total, spawn_rate=total)
    t0 = time.time()

    if faults:

        def kill_host() -> None:
            cluster.kill("worker1")
            notes.append(f"worker1 killed (SIGKILL, whole host) at {time.time() - t0:.0f} s")

        def restart_store() -> None:
            at = time.time() - t0
            down_s = cluster.restart_store()
            notes.append(f"SeaweedFS killed at {at:.0f} s, back after {down_s:.1f} s")

        gevent.spawn_later(seconds / 3, kill_host)
        gevent.spawn_later(seconds / 2, restart_store)
    gevent.spawn_later(seconds, runner.quit)
    runner.greenlet.join()
    t1 = time.time()
    accepted = list(SHARED.accepted)
    drain_s = wait_drained(cluster, accepted, timeout=600)
    t2 = time.time()
    stats = {}
    for (name, _method), entry in sorted(env.stats.entries.items()):
        stats[f"{name}"] = {
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "p50_ms": entry.get_response_time_percentile(0.5),
            "p95_ms": entry.get_response_time_percentile(0.95),
            "p99_ms": entry.get_response_time_percentile(0.99),
        }
    errors = sum(e.occurrences for e in env.stats.errors.values())
    result = {
        "label": label,
        "seconds": round(t1 - t0, 1),
        "uploads_accepted": len(accepted),
        "uploads_per_s": round(len(accepted) / (t1 - t0), 2),
        "request_errors": errors,
        "error_kinds": sorted({f"{e.method} {e.name}: {e.error}"[:160] for e in env.stats.errors.values()}),
        "signed": SHARED.signed,
        "sign_races_refused": SHARED.sign_races,
        "drain_rate_predictions_per_s": round(predictions_between(cluster, t0, t2) / max(t2 - t0, 1e-9), 2),
        "backlog_drained_after_s": round(drain_s, 1),
        "endpoints": stats,
        "outcome": outcome(cluster, accepted),
        "notes": notes,
    }
    return result


def report(result: dict) -> None:
    o = result["outcome"]
    print(f"\n== {result['label']}: {result['seconds']} s")
    print(
        f"uploads accepted {result['uploads_accepted']} ({result['uploads_per_s']}/s), request errors "
        f"{result['request_errors']}; signed {result['signed']} (+{result['sign_races_refused']} refused races)"
    )
    print(
        f"queue drain {result['drain_rate_predictions_per_s']} predictions/s; backlog drained "
        f"{result['backlog_drained_after_s']} s after the clients stopped"
    )
    print(f"outcome: accepted {o['accepted']} lost {o['lost']} duplicated {o['duplicated']} failed {o['failed']}")
    for note in result["notes"]:
        print(f"  {note}")
    for kind in result["error_kinds"]:
        print(f"  error: {kind}")
    print(f"{'endpoint':40} {'n':>6} {'fail':>5} {'p50':>6} {'p95':>6} {'p99':>6}  ms")
    for name, s in result["endpoints"].items():
        figures = f"{s['p50_ms']:>6.0f} {s['p95_ms']:>6.0f} {s['p99_ms']:>6.0f}"
        print(f"{name:40} {s['requests']:>6} {s['failures']:>5} {figures}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--clinicians", type=int, default=6)
    parser.add_argument("--physicians", type=int, default=2)
    parser.add_argument("--api", type=int, default=2)
    parser.add_argument("--root", default="")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    if args.seconds > 600 or args.clinicians + args.physicians + args.api > 50:
        sys.exit("bounded: at most 600 s and 50 users")
    own = not args.root
    if own:
        root = Path(tempfile.mkdtemp(prefix="cancerweb-loadtest-"))
        cluster = Cluster(root=str(root), users=max(args.clinicians, 2 * args.physicians, 2))
        print(f"starting a cluster in {root} ...", flush=True)
        cluster.start()
    else:
        cluster = Cluster.load(args.root)
    SHARED.cluster = cluster
    users: dict[Any, int] = {Clinician: args.clinicians, Physician: args.physicians, ApiClient: args.api}
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}", flush=True)
    results = []
    try:
        cluster.kill("worker2", sig=15)
        results.append(run(cluster, label="one worker host", seconds=args.seconds, users=users))
        report(results[-1])
        cluster.start_worker("worker2")
        results.append(run(cluster, label="two worker hosts", seconds=args.seconds, users=users))
        report(results[-1])
        results.append(
            run(cluster, label="two hosts, one killed + SeaweedFS restarted", seconds=args.seconds, users=users,
                faults=True)
        )  # fmt: skip
        report(results[-1])
        print(f"\nload average at the end {os.getloadavg()}")
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        if own:
            cluster.stop()
    last = results[-1]["outcome"]
    if last["lost"] or last["duplicated"] or last["failed"]:
        sys.exit("FAILED: the fault run lost, duplicated or failed uploads")


if __name__ == "__main__":
    main()
