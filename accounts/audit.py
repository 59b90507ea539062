from __future__ import annotations

from typing import Any

from accounts.models import AuditEvent, User


def audit_record(
    *,
    actor: User | None,
    action: str,
    obj: Any,
    data: dict[str, Any] | None = None,
    client_address: str | None = None,
) -> AuditEvent:
    """Write one audit event. Call inside the service's transaction so the event
    and the change commit or roll back together."""
    event = AuditEvent(
        actor=actor,
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(getattr(obj, "uuid", obj.pk)),
        data=data or {},
        client_address=client_address,
    )
    event.full_clean()
    event.save()
    return event
