"""The audit trail: append-only events chained by SHA-256.

Each event stores the hash of the event before it (by id) and a hash over its own
fields. Appending locks the chain head row, so concurrent writers queue instead of
forking the chain; PostgreSQL refuses UPDATE and DELETE on the rows (a trigger added
by migration accounts 0004), and `manage.py verify_audit` walks the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction

from accounts.models import AuditChainHead, AuditEvent, User

GENESIS = "0" * 64


def event_hash(event: AuditEvent) -> str:
    """SHA-256 over the fields that make up an event, in a canonical JSON form."""
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
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def _locked_head() -> AuditChainHead:
    try:
        return AuditChainHead.objects.select_for_update().get(pk=1)
    except AuditChainHead.DoesNotExist:
        try:
            with transaction.atomic():
                AuditChainHead.objects.create(pk=1)
        except IntegrityError:
            pass  # another writer created it first; lock theirs
        return AuditChainHead.objects.select_for_update().get(pk=1)


def audit_record(
    *,
    actor: User | None,
    action: str,
    obj: Any = None,
    data: dict[str, Any] | None = None,
    client_address: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
) -> AuditEvent:
    """Write one audit event. Call inside the service's transaction so the event
    and the change commit or roll back together. `obj` names the object; events
    about something that is not a row (a failed login for an unknown name) pass
    object_type and object_id instead."""
    if obj is not None:
        object_type = obj._meta.label_lower
        object_id = str(getattr(obj, "uuid", obj.pk))
    if not object_type or object_id is None:
        raise ValueError("an audit event needs an object or an object_type and object_id")
    with transaction.atomic():
        head = _locked_head()
        event = AuditEvent(
            actor=actor,
            action=action,
            object_type=object_type,
            object_id=object_id,
            data=data or {},
            client_address=client_address,
            prev_hash=head.last_hash or GENESIS,
        )
        event.full_clean(exclude=["hash"])
        # Hash what the database will hand back: JSON goes through a round trip so
        # the stored value and the hashed value are the same document.
        event.data = json.loads(json.dumps(event.data, default=str))
        event.hash = event_hash(event)
        event.save()
        head.last_hash = event.hash
        head.length += 1
        head.save(update_fields=["last_hash", "length"])
    return event


@dataclass(frozen=True)
class AuditEntry:
    """One event for `audit_record_many`."""

    action: str
    obj: Any
    data: dict[str, Any]


def audit_record_many(*, actor: User | None, entries: list[AuditEntry]) -> list[AuditEvent]:
    """Write several events with one lock of the chain head and one INSERT: what a
    batch of predictions stored in one transaction needs. The chain is the same as
    writing them one by one with `audit_record` (each event's prev_hash is the event
    before it, in id order, which the single INSERT keeps while the head is locked)."""
    if not entries:
        return []
    with transaction.atomic():
        head = _locked_head()
        previous = head.last_hash or GENESIS
        events = []
        for entry in entries:
            event = AuditEvent(
                actor=actor,
                action=entry.action,
                object_type=entry.obj._meta.label_lower,
                object_id=str(getattr(entry.obj, "uuid", entry.obj.pk)),
                data=json.loads(json.dumps(entry.data or {}, default=str)),
                prev_hash=previous,
            )
            # No full_clean per event: the fields come from code, not input (the types and
            # lengths are the model's; the database still enforces them), and at one
            # event per prediction it cost more than the rest of the batch's audit.
            event.hash = event_hash(event)
            previous = event.hash
            events.append(event)
        AuditEvent.objects.bulk_create(events)
        head.last_hash = previous
        head.length += len(events)
        head.save(update_fields=["last_hash", "length"])
    return events


def record_view(*, actor: User, obj: Any, client_address: str | None = None) -> AuditEvent:
    """Every opening of a clinical record is audited (HIPAA access logging), whichever
    door it came through."""
    return audit_record(actor=actor, action="view", obj=obj, data={}, client_address=client_address)


@dataclass(frozen=True)
class ChainBreak:
    event_id: int | None
    event_uuid: str | None
    reason: str

    def __str__(self) -> str:
        where = f"audit event id={self.event_id} uuid={self.event_uuid}" if self.event_id else "end of chain"
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class ChainReport:
    checked: int
    first_break: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.first_break is None


def _events() -> Iterator[AuditEvent]:
    return AuditEvent.objects.order_by("id").iterator(chunk_size=2000)


def verify_chain() -> ChainReport:
    """Walk the chain in id order and return the first event that does not fit."""
    previous = GENESIS
    checked = 0
    for event in _events():
        checked += 1
        if event.prev_hash != previous:
            return ChainReport(
                checked,
                ChainBreak(
                    event.id,
                    str(event.uuid),
                    "its prev_hash does not match the hash of the event before it "
                    "(an event was deleted, inserted or reordered before this one)",
                ),
            )
        if event_hash(event) != event.hash:
            return ChainReport(
                checked, ChainBreak(event.id, str(event.uuid), "its fields do not match its hash (the row was edited)")
            )
        previous = event.hash
    head = AuditChainHead.objects.filter(pk=1).first()
    expected_hash = head.last_hash if head and head.last_hash else GENESIS
    expected_length = head.length if head else 0
    if previous != expected_hash or checked != expected_length:
        return ChainReport(
            checked,
            ChainBreak(
                None,
                None,
                f"the chain holds {checked} events ending in {previous[:12]}…, the chain head records "
                f"{expected_length} ending in {expected_hash[:12]}… (the newest events were deleted or added)",
            ),
        )
    return ChainReport(checked, None)
