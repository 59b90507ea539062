from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.models import AbstractUser, Group
from django.db import models
from django.utils import timezone


class User(AbstractUser):
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)

    @property
    def display_name(self) -> str:
        return self.get_full_name() or self.username


class CareUnit(models.Model):
    """A ward, clinic or department. A case belongs to the unit it was created in.

    Membership is membership of the unit's group: guardian grants object permissions
    on the unit's cases to that group, so joining or leaving a unit changes what a
    person sees without touching any case row.
    """

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    group = models.OneToOneField(
        Group,
        on_delete=models.PROTECT,
        related_name="care_unit",
        help_text="Holds the unit's members; object permissions on the unit's cases are granted to it.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class AuditEvent(models.Model):
    """An append-only record of something a person (or the system) did.

    Written by services in the same transaction as the change it records. Holds
    ids and field values, never image bytes.
    """

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Who acted; empty for the system (the inference worker).",
    )
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    data = models.JSONField(default=dict, blank=True, help_text="Old and new values; no image bytes.")
    client_address = models.GenericIPAddressField(null=True, blank=True)
    # The hash chain: each event stores its predecessor's hash and a hash over its own
    # fields, so an edited, deleted, inserted or reordered row breaks the chain.
    prev_hash = models.CharField(max_length=64, blank=True, help_text="hash of the previous event (chain order: id)")
    hash = models.CharField(max_length=64, blank=True, help_text="SHA-256 over this event's fields and prev_hash")

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            # A decision's signing event, read by every signature check (review page,
            # case page): found by its object, not by scanning every event of the action.
            models.Index(fields=["object_type", "object_id"], name="auditevent_object"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} {self.object_type}:{self.object_id}"


class AuditChainHead(models.Model):
    """One row (pk=1) holding the hash and length of the audit chain.

    Writers lock it (SELECT ... FOR UPDATE) to append, which serialises appends so
    two transactions never chain onto the same predecessor; verify_audit compares the
    chain's end with it, which catches the deletion of the newest events.
    """

    last_hash = models.CharField(max_length=64, blank=True)
    length = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"audit chain head ({self.length} events)"


class ApiToken(models.Model):
    """A revocable, expiring API token for a machine acting as a user.

    Only the SHA-256 of the secret is stored: a leaked database does not leak usable
    tokens. The secret has 256 bits of entropy, so a plain hash is enough (no slow KDF)."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. the integrating system.")
    key_prefix = models.CharField(max_length=12, help_text="First characters of the secret, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(expires_at__gt=models.F("created_at")), name="apitoken_expires"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"
