"""Chain the audit events that predate the hash chain, then make the table
append-only in PostgreSQL: a trigger refuses every UPDATE and DELETE, whoever the
application's role is. SQLite (the demo) has no such guard; verify_audit still
detects changes there."""

import hashlib
import json

from django.db import migrations

TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION cancerweb_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only: % on accounts_auditevent is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS accounts_auditevent_append_only ON accounts_auditevent;
CREATE TRIGGER accounts_auditevent_append_only
    BEFORE UPDATE OR DELETE ON accounts_auditevent
    FOR EACH ROW EXECUTE FUNCTION cancerweb_audit_append_only();
"""

DROP_SQL = """
DROP TRIGGER IF EXISTS accounts_auditevent_append_only ON accounts_auditevent;
DROP FUNCTION IF EXISTS cancerweb_audit_append_only();
"""


def _hash(event, prev_hash):
    # Same canonical form as accounts.audit.event_hash (copied: migrations must not
    # import code that changes later).
    content = {
        "uuid": str(event.uuid),
        "created_at": event.created_at.isoformat(),
        "actor": event.actor_id,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "data": event.data,
        "client_address": event.client_address,
        "prev_hash": prev_hash,
    }
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def chain_existing(apps, schema_editor):
    AuditEvent = apps.get_model("accounts", "AuditEvent")
    AuditChainHead = apps.get_model("accounts", "AuditChainHead")
    previous = "0" * 64
    count = 0
    for event in AuditEvent.objects.order_by("id"):
        event.prev_hash = previous
        event.hash = _hash(event, previous)
        event.save(update_fields=["prev_hash", "hash"])
        previous = event.hash
        count += 1
    AuditChainHead.objects.update_or_create(pk=1, defaults={"last_hash": previous if count else "", "length": count})


def add_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(TRIGGER_SQL, params=None)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0003_i4a_care_units_audit_chain")]

    operations = [
        migrations.RunPython(chain_existing, migrations.RunPython.noop),
        migrations.RunPython(add_trigger, drop_trigger),
    ]
