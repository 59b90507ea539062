"""The audit trail: hash chain, tamper detection by verify_audit, the PostgreSQL
append-only trigger, events for logins and record views, the admins' page and CSV."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import uuid

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.audit import GENESIS, audit_record, event_hash, verify_chain
from accounts.models import AuditEvent
from diagnostics.services.cases import IncomingFile, case_create
from tests.helpers import PASSWORD, image_bytes, login

pytestmark = pytest.mark.django_db

CHAIN = 12


def _burn_id() -> None:
    """Leave a gap in the id sequence (a rolled-back insert), so a forger has room
    to insert a row in the middle of the chain."""
    try:
        with transaction.atomic():
            audit_record(actor=None, action="burn", object_type="t.t", object_id="x")
            raise RuntimeError
    except RuntimeError:
        pass


def _chain(user) -> list[AuditEvent]:  # type: ignore[no-untyped-def]
    start = AuditEvent.objects.count()
    for i in range(CHAIN):
        audit_record(
            actor=user if i % 2 else None,
            action=f"test.event{i}",
            object_type="tests.thing",
            object_id=str(i),
            data={"old": {"n": i}, "new": {"n": i + 1}, "note": "é"},
            client_address="10.0.0.1" if i % 3 else "2001:db8::1",
        )
        _burn_id()
    events = list(AuditEvent.objects.order_by("id"))
    assert len(events) == start + CHAIN
    return events[start:]


def _raw(sql: str, params: list[object]) -> None:
    """A forger with direct database access: bypass the append-only trigger the way a
    superuser could (session_replication_role=replica disables triggers)."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        cursor.execute(sql, params)
        cursor.execute("SET LOCAL session_replication_role = DEFAULT")


def _forged_hash(ev_uuid: str, prev: str) -> str:
    e = AuditEvent(
        uuid=uuid.UUID(ev_uuid),
        created_at=timezone.now().replace(microsecond=0),
        action="forged",
        object_type="tests.thing",
        object_id="x",
        data={},
        prev_hash=prev,
    )
    return e.created_at, event_hash(e)  # type: ignore[return-value]


EDIT_FIELDS = {
    "action": ("UPDATE accounts_auditevent SET action = 'edited' WHERE id = %s", []),
    "data": ('UPDATE accounts_auditevent SET data = \'{"new": {"n": 99}}\'::jsonb WHERE id = %s', []),
    "object_id": ("UPDATE accounts_auditevent SET object_id = 'other' WHERE id = %s", []),
    "created_at": ("UPDATE accounts_auditevent SET created_at = created_at - interval '1 day' WHERE id = %s", []),
    "client_address": ("UPDATE accounts_auditevent SET client_address = '192.0.2.9' WHERE id = %s", []),
    "actor": ("UPDATE accounts_auditevent SET actor_id = NULL WHERE id = %s", []),
    "hash": ("UPDATE accounts_auditevent SET hash = repeat('a', 64) WHERE id = %s", []),
    "prev_hash": ("UPDATE accounts_auditevent SET prev_hash = repeat('b', 64) WHERE id = %s", []),
}

# 50 tampers: (kind, detail, position). The expected first bad row follows from the kind.
TAMPERS: list[tuple[str, str, int]] = (
    [("edit", field, pos) for field in EDIT_FIELDS for pos in (0, 5, CHAIN - 1)]  # 24
    + [("delete", "", pos) for pos in (0, 3, 6, 9, CHAIN - 1)]  # 5
    + [("reorder", "", pos) for pos in (0, 1, 2, 4, 5, 7, 8, 10)]  # 8 (swap with next)
    + [("insert_linked", "", pos) for pos in (0, 2, 4, 6, 8, 10, CHAIN - 1)]  # 7
    + [("insert_unlinked", "", pos) for pos in (1, 3, 5, 7, 9, CHAIN - 1)]  # 6
)
assert len(TAMPERS) == 50


def _actor_row(events: list[AuditEvent], pos: int) -> int:
    return pos if events[pos].actor_id is not None else pos + 1 if pos + 1 < CHAIN else pos - 1


@pytest.mark.parametrize(("kind", "detail", "pos"), TAMPERS, ids=[f"{k}-{d}-{p}" for k, d, p in TAMPERS])
def test_verify_audit_names_the_first_bad_row(clinician, kind, detail, pos):  # type: ignore[no-untyped-def]
    events = _chain(clinician)
    assert verify_chain().ok
    expect_id: int | None
    if kind == "edit":
        if detail == "actor":
            pos = _actor_row(events, pos)
        sql, _ = EDIT_FIELDS[detail]
        _raw(sql, [events[pos].id])
        expect_id = events[pos].id
    elif kind == "delete":
        _raw("DELETE FROM accounts_auditevent WHERE id = %s", [events[pos].id])
        expect_id = events[pos + 1].id if pos + 1 < CHAIN else None  # last: the head no longer matches
    elif kind == "reorder":
        a, b = events[pos], events[pos + 1]
        _raw("UPDATE accounts_auditevent SET id = -1 WHERE id = %s", [a.id])
        _raw("UPDATE accounts_auditevent SET id = %s WHERE id = %s", [a.id, b.id])
        _raw("UPDATE accounts_auditevent SET id = %s WHERE id = -1", [b.id])
        expect_id = a.id  # now holds b, whose prev_hash is a's hash, not its predecessor's
    else:
        prev = events[pos].hash
        new_uuid = str(uuid.uuid4())
        created, good_hash = _forged_hash(new_uuid, prev)
        linked = kind == "insert_linked"
        _raw(
            "INSERT INTO accounts_auditevent (id, uuid, created_at, action, object_type, object_id, data, "
            "prev_hash, hash) VALUES (%s, %s, %s, 'forged', 'tests.thing', 'x', '{}'::jsonb, %s, %s)",
            [events[pos].id + 1, new_uuid, created, prev if linked else GENESIS, good_hash],
        )
        if linked:  # a well-forged row fits behind its predecessor; the next row no longer does
            expect_id = events[pos + 1].id if pos + 1 < CHAIN else None
        else:
            expect_id = events[pos].id + 1
    report = verify_chain()
    assert not report.ok
    assert report.first_break is not None
    assert report.first_break.event_id == expect_id, str(report.first_break)
    with pytest.raises(CommandError, match=f"id={expect_id} " if expect_id else "end of chain"):
        call_command("verify_audit")


def test_verify_audit_passes_an_intact_chain(clinician):
    _chain(clinician)
    out = io.StringIO()
    call_command("verify_audit", stdout=out)
    assert "audit chain intact" in out.getvalue()


def test_each_event_links_to_the_previous_one(clinician):
    events = _chain(clinician)
    for before, after in zip(events, events[1:], strict=False):
        assert after.prev_hash == before.hash
        assert after.hash == event_hash(after)
        assert len(after.hash) == 64 and int(after.hash, 16) >= 0


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE accounts_auditevent SET action = 'x' WHERE id = %s",
        "DELETE FROM accounts_auditevent WHERE id = %s",
    ],
)
def test_postgresql_refuses_update_and_delete_of_audit_rows(clinician, sql):
    event = _chain(clinician)[3]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [event.id])
    event.refresh_from_db()
    assert event.action == "test.event3"
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()


def test_login_failed_login_and_record_views_are_audited(clinician):
    client = Client()
    client.post(reverse("login"), {"username": "clinician", "password": "wrong-password"})
    failed = AuditEvent.objects.filter(action="auth.login_failed").latest("id")
    assert failed.object_id == str(clinician.uuid) and failed.client_address == "127.0.0.1"
    assert "wrong-password" not in json.dumps(failed.data)
    client.post(reverse("login"), {"username": "clinician", "password": PASSWORD})
    assert AuditEvent.objects.filter(action="auth.login", actor=clinician).exists()
    case = case_create(
        acting_user=clinician,
        patient_ref="PSN-AUD",
        body_site="skin",
        files=[IncomingFile(name="a.png", data=image_bytes())],
    )
    scan = case.scans.get()
    assert client.get(reverse("case_detail", args=[case.uuid])).status_code == 200
    assert client.get(reverse("scan_image", args=[scan.uuid])).status_code == 200
    viewed = {(e.object_type, e.object_id) for e in AuditEvent.objects.filter(action="view", actor=clinician)}
    assert ("diagnostics.case", str(case.uuid)) in viewed
    assert ("diagnostics.scan", str(scan.uuid)) in viewed
    created = AuditEvent.objects.get(action="case.create", object_id=str(case.uuid))
    assert created.data["new"]["body_site"] == "skin"
    assert verify_chain().ok


def test_admin_browses_filters_and_exports_the_trail_and_the_export_is_audited(admin_user, clinician):
    _chain(clinician)
    client = login(admin_user)
    page = client.get(reverse("audit_list"), {"action": "test.event1"}).content.decode()
    assert "test.event1" in page and "test.event2" not in page
    bad = client.get(reverse("audit_list"), {"date_from": "2026-13-40"})
    assert bad.status_code == 400 and "Enter a valid date" in bad.content.decode()
    response = client.get(reverse("audit_export"), {"actor": "clinician"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows and all(r["actor"] == "clinician" for r in rows)
    assert {r["action"] for r in rows} >= {"test.event1", "test.event3"}
    for r in rows:
        assert len(r["hash"]) == 64
    export = AuditEvent.objects.filter(action="audit.export").latest("id")
    assert export.actor == admin_user and export.data == {"filters": {"actor": "clinician"}, "rows": len(rows)}
    assert verify_chain().ok


@pytest.mark.parametrize("persona", ["clinician", "physician", "outsider"])
def test_only_admins_see_the_trail(request, persona):
    client = login(request.getfixturevalue(persona))
    assert client.get(reverse("audit_list")).status_code == 403
    assert client.get(reverse("audit_export")).status_code == 403


def test_hash_is_sha256_of_the_canonical_fields(clinician):
    event = _chain(clinician)[0]
    content = {
        "uuid": str(event.uuid),
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "data": event.data,
        "client_address": event.client_address,
        "prev_hash": event.prev_hash,
    }
    raw = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert event.hash == hashlib.sha256(raw).hexdigest()
