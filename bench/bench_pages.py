"""Pages and API lists at 1k / 10k / 100k cases: median and p95 ms and query count.

Each volume gets its own PostgreSQL database (kept, so code changes can be measured
again on the same data with --reuse), seeded in bulk with COPY: two care units of
half the cases each, 80 % of the review items pending, the rest signed with a valid
signature, the real object-permission rows (one per case, as case_create grants), and
an audit trail whose hash chain verifies (case.create, scan.upload, prediction.create
and review.sign events: about 3.2 per case). Users, units and the model are made
through the services.

Requests go through Django's test client in this process (no network), logged in as
unit A's physician (review pages, dashboard) and clinician (case pages).

    nice -n 10 .venv/bin/python bench/bench_pages.py [--volumes 1000,10000,100000] [--repeat 20] [--reuse]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PREFIX = "cw_bench_pages"


def configure(db_name: str) -> None:
    from cancerweb.env import generate_key_entry

    os.environ["DJANGO_SETTINGS_MODULE"] = "cancerweb.settings"
    os.environ["DJANGO_SECRET_KEY"] = "bench-only-secret-key-0123456789abcdefghijkl"  # noqa: S105
    os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver,localhost"
    os.environ["CANCERWEB_DATA_DIR"] = str(Path(tempfile.gettempdir()) / f"{PREFIX}-data")
    os.environ["CELERY_BROKER_URL"] = "memory://"
    os.environ["CANCERWEB_CACHE_URL"] = "locmem://"
    os.environ["CANCERWEB_HTTPS"] = "0"
    os.environ.setdefault("CANCERWEB_ENCRYPTION_KEYS", generate_key_entry("bench"))
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{db_name}"
    for name in ("CANCERWEB_DEMO", "CANCERWEB_STORAGE_URL", "DJANGO_DEBUG"):
        os.environ.pop(name, None)


def psql(sql: str) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=True, capture_output=True)


# --- seeding -----------------------------------------------------------------------


def seed(n: int) -> dict[str, float]:
    """Bulk rows for n cases on a freshly migrated database."""
    from django.conf import settings
    from django.contrib.auth.models import Permission
    from django.db import connection

    from accounts import services as account_services
    from accounts.audit import GENESIS, event_hash
    from accounts.models import AuditChainHead, AuditEvent, User
    from diagnostics.models import Prediction, ReviewDecision, ReviewItem
    from diagnostics.services.model_registry import model_register
    from diagnostics.signatures import content_sha256
    from tests.factories import UserFactory

    t0 = time.perf_counter()
    model = model_register(acting_user=None, bundle_dir=settings.MODEL_DIR / "demo-pcam", activate=True)
    units, people = [], []
    for name in ("A", "B"):
        unit = account_services.unit_create(acting_user=None, name=f"Unit {name}")
        clinician = UserFactory(username=f"clinician{name}", role="clinician", units=[unit])
        physician = UserFactory(username=f"physician{name}", role="physician", units=[unit])
        units.append(unit)
        people.append((clinician, physician))
    view_case = Permission.objects.get(codename="view_case", content_type__app_label="diagnostics").id
    labels = list(model.labels)
    rng = random.Random(16)  # noqa: S311 (synthetic data)
    now = datetime.fromtimestamp(time.time(), tz=UTC)
    rows: dict[str, list[tuple]] = {k: [] for k in ("case", "perm", "scan", "job", "pred", "item", "dec")}
    events: list[AuditEvent] = []
    head = AuditChainHead.objects.get(pk=1)
    prev = head.last_hash or GENESIS

    def event(actor: User | None, action: str, object_type: str, object_id: str, data: dict, at: datetime) -> None:
        nonlocal prev
        e = AuditEvent(uuid=uuid.uuid4(), created_at=at, actor_id=actor.id if actor else None, action=action,
                       object_type=object_type, object_id=object_id, data=data, client_address=None,
                       prev_hash=prev)  # fmt: skip
        e.hash = event_hash(e)
        prev = e.hash
        events.append(e)

    for i in range(1, n + 1):
        k = i % 2
        unit, (clinician, physician) = units[k], people[k]
        created = now - timedelta(days=90) + timedelta(seconds=90 * 86400 * i / n)
        case_uuid, scan_uuid, job_uuid, pred_uuid, item_uuid = (uuid.uuid4() for _ in range(5))
        digest = hashlib.sha256(f"scan-{i}".encode()).hexdigest()
        rows["case"].append((i, case_uuid, f"PSN-{i:06d}", "lymph node", "", model.task, clinician.id, created,
                             unit.id))  # fmt: skip
        rows["perm"].append((i, unit.group_id, view_case, i))
        rows["scan"].append((i, scan_uuid, i, digest, f"sha256/{digest[:2]}/{digest}", f"s{i}.png", "PNG", 96, 96,
                             4000, False, clinician.id, created))  # fmt: skip
        done = created + timedelta(seconds=3)
        rows["job"].append((i, job_uuid, i, "succeeded", 1, "", "bench:1", created, created, done, done))
        p1 = rng.random()
        probabilities = [1 - p1, p1]
        index = 1 if p1 >= 0.5 else 0
        confidence = max(p1, 1 - p1)
        rows["pred"].append((i, pred_uuid, i, i, model.id, json.dumps(labels), json.dumps(probabilities),
                             labels[index], index, float(index), confidence, confidence < 0.6, "", digest, 12.0,
                             done))  # fmt: skip
        signed = rng.random() < 0.2
        rows["item"].append((i, item_uuid, i, "signed" if signed else "pending", done))
        event(clinician, "case.create", "diagnostics.case", str(case_uuid),
              {"new": {"body_site": "lymph node", "unit": str(unit.uuid), "task": model.task}}, created)  # fmt: skip
        event(clinician, "scan.upload", "diagnostics.scan", str(scan_uuid),
              {"case": str(case_uuid), "sha256": digest, "format": "PNG", "bytes": 4000}, created)  # fmt: skip
        event(None, "prediction.create", "diagnostics.prediction", str(pred_uuid),
              {"model": str(model), "predicted": labels[index], "uncertain": confidence < 0.6,
               "scan": str(scan_uuid)}, done)  # fmt: skip
        if signed:
            at = done + timedelta(hours=2)
            item = ReviewItem(uuid=item_uuid, prediction=Prediction(uuid=pred_uuid))
            decision = ReviewDecision(uuid=uuid.uuid4(), outcome="confirmed", stage=labels[index], reason="",
                                      physician=physician, signer_name=physician.get_full_name(), signed_at=at,
                                      review_item=item)  # fmt: skip
            decision.content_sha256 = content_sha256(decision)
            rows["dec"].append((i, decision.uuid, i, "confirmed", labels[index], "", physician.id,
                                decision.signer_name, at, None, decision.content_sha256))  # fmt: skip
            event(physician, "review.sign", "diagnostics.reviewdecision", str(decision.uuid),
                  {"review_item": str(item_uuid), "outcome": "confirmed", "stage": labels[index],
                   "predicted": labels[index], "supersedes": None, "meaning": "confirmed",
                   "signer_name": decision.signer_name, "signed_at": at.isoformat(),
                   "content_sha256": decision.content_sha256}, at)  # fmt: skip
    built = time.perf_counter()
    tables = {
        "case": ("diagnostics_case",
                 "id, uuid, patient_ref, body_site, note, task, created_by_id, created_at, unit_id"),
        "perm": ("diagnostics_casegroupobjectpermission", "id, group_id, permission_id, content_object_id"),
        "scan": ("diagnostics_scan", "id, uuid, case_id, sha256, storage_name, original_name, format, width, height, "
                 "size_bytes, burned_in_annotation, uploaded_by_id, uploaded_at"),
        "job": ("diagnostics_inferencejob", "id, uuid, scan_id, status, attempts, error, claimed_by, created_at, "
                "started_at, finished_at, updated_at"),
        "pred": ("diagnostics_prediction", "id, uuid, job_id, scan_id, model_version_id, labels, probabilities, "
                 "predicted_label, predicted_index, stage_rank, confidence, uncertain, heatmap_storage_name, "
                 "input_sha256, inference_ms, created_at"),
        "item": ("diagnostics_reviewitem", "id, uuid, prediction_id, status, created_at"),
        "dec": ("diagnostics_reviewdecision", "id, uuid, review_item_id, outcome, stage, reason, physician_id, "
                "signer_name, signed_at, supersedes_id, content_sha256"),
    }  # fmt: skip
    with connection.cursor() as cursor:
        raw = cursor.cursor
        for key, (table, columns) in tables.items():
            # Columns this seed does not name (added by later features) get their model default.
            extra_columns, extra_values = _column_defaults(table, columns)
            all_columns = ", ".join([columns, *extra_columns])
            with raw.copy(f"COPY {table} ({all_columns}) FROM STDIN") as copy:  # noqa: S608 (fixed names)
                for row in rows[key]:
                    copy.write_row((*row, *extra_values))
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")  # noqa: S608
        with raw.copy("COPY accounts_auditevent (uuid, created_at, actor_id, action, object_type, object_id, data, "
                      "client_address, prev_hash, hash) FROM STDIN") as copy:  # fmt: skip
            for e in events:
                copy.write_row((e.uuid, e.created_at, e.actor_id, e.action, e.object_type, e.object_id,
                                json.dumps(e.data), None, e.prev_hash, e.hash))  # fmt: skip
        cursor.execute("ANALYZE")
    AuditChainHead.objects.filter(pk=1).update(last_hash=prev, length=head.length + len(events))
    return {"build_s": built - t0, "copy_s": time.perf_counter() - built, "audit_events": len(events)}


def _column_defaults(table: str, columns: str) -> tuple[list[str], tuple[object, ...]]:
    """The NOT NULL columns of ``table`` that ``columns`` leaves out, with their model's
    default (as COPY text needs it: JSON as JSON text)."""
    from django.apps import apps
    from django.db import models as m

    model = next(mdl for mdl in apps.get_models() if mdl._meta.db_table == table)
    named = {c.strip() for c in columns.split(",")}
    extra: list[str] = []
    values: list[object] = []
    for field in model._meta.concrete_fields:
        if field.column in named or field.null or not (field.has_default() or field.empty_strings_allowed):
            continue
        value = field.get_default()  # "" for text fields without a default
        extra.append(field.column)
        values.append(json.dumps(value) if isinstance(field, m.JSONField) else value)
    return extra, tuple(values)


# --- measuring ---------------------------------------------------------------------


def measure(repeat: int) -> dict[str, tuple[float, float, int]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.urls import reverse

    from accounts.models import User
    from diagnostics.models import ReviewItem
    from tests.helpers import api, login

    physician = User.objects.get(username="physicianA")
    clinician = User.objects.get(username="clinicianA")
    signed = ReviewItem.objects.filter(status="signed", prediction__scan__case__unit__name="Unit A").order_by("-id")
    item = signed.first()
    assert item is not None
    doctor, clerk = login(physician), login(clinician)
    doctor_api, clerk_api = api(physician), api(clinician)
    pages = {
        "review queue, page 1": (doctor, reverse("review_queue")),
        "review queue, 2 s poll (fragment)": (doctor, reverse("review_queue") + "?fragment=1"),
        "review item, signed": (doctor, reverse("review_detail", args=[item.uuid])),
        "dashboard": (doctor, reverse("dashboard")),
        "/api/v1/review-queue/": (doctor_api, "/api/v1/review-queue/"),
        "my cases, page 1": (clerk, reverse("case_list")),
        "my cases, 2 s poll (fragment)": (clerk, reverse("case_list") + "?fragment=1"),
        "/api/v1/cases/": (clerk_api, "/api/v1/cases/"),
        "/api/v1/jobs/": (clerk_api, "/api/v1/jobs/"),
    }
    # A poll that already holds the current version (If-None-Match): what an open tab
    # costs while nothing in its care units changes.
    for name, base in (
        ("review queue", "review queue, 2 s poll (fragment)"),
        ("my cases", "my cases, 2 s poll (fragment)"),
    ):
        client, url = pages[base]
        etag = client.get(url).headers.get("ETag", "")
        pages[f"{name}, 2 s poll, unchanged"] = (client, url, etag)  # type: ignore[assignment]  # a poll row carries its ETag
    out = {}
    for name, (client, url, *etag) in pages.items():
        conditional = bool(etag)
        timings = []
        queries = 0
        for i in range(repeat + 3):
            headers = {"If-None-Match": etag[0]} if conditional and etag[0] else {}
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get(url, headers=headers)
                elapsed = (time.perf_counter() - started) * 1000
            if response.status_code not in (200, 304):
                raise RuntimeError(f"{name}: {response.status_code} {response.content[:300]!r}")
            if conditional and response.status_code == 200:  # a new version (the time bound): keep it, as poll.js does
                etag = [response.headers.get("ETag", "")]
            if i >= 3:  # the first few warm caches and connections
                timings.append(elapsed)
                queries = len(captured)
        timings.sort()
        p95 = timings[min(len(timings) - 1, round(0.95 * (len(timings) - 1)))]
        out[name] = (statistics.median(timings), p95, queries)
    return out


def run_volume(n: int, repeat: int, reuse: bool) -> dict:
    db_name = f"{PREFIX}_{n}"
    configure(db_name)
    seeded = {}
    if not reuse:
        psql(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        psql(f'CREATE DATABASE "{db_name}"')
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)  # with --reuse: this code's new indexes, built on the data
    if not reuse:
        seeded = seed(n)
    return {"n": n, "seeded": seeded, "pages": measure(repeat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", default="1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="measure the databases seeded by an earlier run")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one volume per process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_volume(args.one, args.repeat, args.reuse)))
        return
    results = []
    print(f"machine: {os.cpu_count()} cores, load average {tuple(round(x, 1) for x in os.getloadavg())}", flush=True)
    for n in [int(v) for v in args.volumes.split(",")]:
        # A process per volume: Django binds its database once per process.
        cmd = [sys.executable, __file__, "--one", str(n), "--repeat", str(args.repeat)] + (
            ["--reuse"] if args.reuse else []
        )
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            sys.exit(f"volume {n} failed:\n{done.stderr[-4000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        s = result["seeded"]
        if s:
            took = time.perf_counter() - started
            print(f"seeded {n} cases ({s['audit_events']} audit events): rows built in {s['build_s']:.1f} s, "
                  f"COPY + ANALYZE {s['copy_s']:.1f} s; whole volume {took:.0f} s", flush=True)  # fmt: skip
        results.append(result)
    volumes = [r["n"] for r in results]
    print(f"\n{'page':36} " + " ".join(f"{f'{n:,} cases':>22}" for n in volumes))
    print(f"{'(median / p95 ms, queries)':36} " + " ".join(f"{'':>22}" for _ in volumes))
    for name in results[0]["pages"]:
        cells = []
        for r in results:
            median, p95, queries = r["pages"][name]
            cells.append(f"{median:>7.0f} / {p95:>5.0f} ({queries:>2})")
        print(f"{name:36} " + " ".join(f"{c:>22}" for c in cells))
    print(f"\nload average at the end {tuple(round(x, 1) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
