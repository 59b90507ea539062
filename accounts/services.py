"""Writes about people: care units and their members, second-factor devices,
authentication events. Each records its audit event in the same transaction."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, Permission
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.audit import audit_record
from accounts.models import ApiToken, CareUnit, User

UNIT_GROUP_PREFIX = "unit:"


def user_units(*, user: User) -> list[CareUnit]:
    if not user.is_authenticated:
        return []
    return list(CareUnit.objects.filter(group__user=user).order_by("name"))


@transaction.atomic
def unit_create(*, acting_user: User | None, name: str, client_address: str | None = None) -> CareUnit:
    name = name.strip()
    group = Group(name=f"{UNIT_GROUP_PREFIX}{name}"[:150])
    group.full_clean()
    group.save()
    unit = CareUnit(name=name, group=group)
    unit.full_clean()
    unit.save()
    audit_record(actor=acting_user, action="unit.create", obj=unit, data={"name": name}, client_address=client_address)
    return unit


def _unit_names(user: User) -> list[str]:
    return [u.name for u in user_units(user=user)]


@transaction.atomic
def unit_member_add(*, acting_user: User | None, unit: CareUnit, user: User, client_address: str | None = None) -> None:
    """Make `user` a member of `unit`: they see its cases from now on (a permission change)."""
    old = _unit_names(user)
    user.groups.add(unit.group)
    audit_record(
        actor=acting_user,
        action="permission.unit_member_add",
        obj=user,
        data={"unit": str(unit.uuid), "old": {"units": old}, "new": {"units": _unit_names(user)}},
        client_address=client_address,
    )


@dataclass(frozen=True)
class UserAccess:
    """What a user may do: account state, roles and unit memberships (groups), staff and
    superuser status, and permissions granted to the user directly."""

    is_active: bool
    is_staff: bool
    is_superuser: bool
    groups: frozenset[str]
    permissions: frozenset[str]  # app_label.codename

    @classmethod
    def of(cls, user: User) -> UserAccess:
        stored = User.objects.get(pk=user.pk)
        return cls(
            is_active=stored.is_active,
            is_staff=stored.is_staff,
            is_superuser=stored.is_superuser,
            groups=frozenset(stored.groups.values_list("name", flat=True)),
            permissions=frozenset(
                f"{app}.{code}"
                for app, code in stored.user_permissions.values_list("content_type__app_label", "codename")
            ),
        )


@transaction.atomic
def user_access_set(
    *, acting_user: User, user: User, access: UserAccess, client_address: str | None = None
) -> UserAccess:
    """The one way a user's access changes from the administration: each changed part is
    a `permission.*` audit event in the same transaction.

    Only a superuser may grant or withdraw staff or superuser status, change a
    superuser's access, or grant permissions directly (others manage roles and units,
    which are groups); nobody changes their own access (a second admin must)."""
    old = UserAccess.of(user)
    if old == access:
        return old
    if acting_user.pk == user.pk:
        raise PermissionDenied("you cannot change your own access; ask another admin")
    if not acting_user.is_superuser:
        if old.is_superuser:
            raise PermissionDenied("only a superuser may change a superuser's access")
        if (old.is_staff, old.is_superuser) != (access.is_staff, access.is_superuser):
            raise PermissionDenied("only a superuser may grant or withdraw staff or superuser status")
        if old.permissions != access.permissions:
            raise PermissionDenied("only a superuser may grant permissions directly; give a role instead")
    flags = ("is_active", "is_staff", "is_superuser")
    changed_flags = [f for f in flags if getattr(old, f) != getattr(access, f)]
    if changed_flags:
        User.objects.filter(pk=user.pk).update(**{f: getattr(access, f) for f in flags})
        audit_record(
            actor=acting_user,
            action="permission.flags_change",
            obj=user,
            data={
                "old": {f: getattr(old, f) for f in changed_flags},
                "new": {f: getattr(access, f) for f in changed_flags},
            },
            client_address=client_address,
        )
    if old.groups != access.groups:
        groups = list(Group.objects.filter(name__in=access.groups))
        if len(groups) != len(access.groups):
            raise ValidationError({"groups": "no such group"})
        user.groups.set(groups)
        audit_record(
            actor=acting_user,
            action="permission.groups_change",
            obj=user,
            data={"old": {"groups": sorted(old.groups)}, "new": {"groups": sorted(access.groups)}},
            client_address=client_address,
        )
    if old.permissions != access.permissions:
        perms = [
            Permission.objects.get(content_type__app_label=app, codename=code)
            for app, code in (p.split(".", 1) for p in access.permissions)
        ]
        user.user_permissions.set(perms)
        audit_record(
            actor=acting_user,
            action="permission.user_permissions_change",
            obj=user,
            data={"old": {"permissions": sorted(old.permissions)}, "new": {"permissions": sorted(access.permissions)}},
            client_address=client_address,
        )
    for attr in flags:
        setattr(user, attr, getattr(access, attr))
    return access


# --- second factor ---------------------------------------------------------------


@transaction.atomic
def otp_device_start(*, user: User) -> TOTPDevice:
    """The unconfirmed device whose secret the enrolment page shows (one per user
    until confirmed, so reloading the page does not change the secret)."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).order_by("id").first()
    if device is None:
        device = TOTPDevice(user=user, name="authenticator", confirmed=False)
        device.full_clean()
        device.save()
    return device


@transaction.atomic
def otp_device_confirm(*, user: User, device: TOTPDevice, token: str, client_address: str | None = None) -> bool:
    """Confirm enrolment with a first code from the authenticator app."""
    if device.user_id != user.id or device.confirmed:
        raise ValidationError({"token": "this enrolment is not open"})
    if not device.verify_token(token):
        audit_record(actor=user, action="otp.enrol_failed", obj=user, data={}, client_address=client_address)
        return False
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    audit_record(
        actor=user,
        action="otp.enrol",
        obj=user,
        data={"device": device.persistent_id},
        client_address=client_address,
    )
    return True


SESSION_OTP_FAILURES = "cw_otp_failures"


def otp_verify_recorded(*, user: User, ok: bool, client_address: str | None = None, session: Any = None) -> bool:
    """Records a second-factor check. Wrong codes are counted in the login session:
    after OTP_MAX_FAILURES the answer is True, and the caller must end the session
    (the password has to be given again before more codes can be tried)."""
    failures = 0
    if session is not None and not ok:
        failures = int(session.get(SESSION_OTP_FAILURES, 0)) + 1
        session[SESSION_OTP_FAILURES] = failures
    locked = failures >= settings.OTP_MAX_FAILURES
    with transaction.atomic():
        audit_record(
            actor=user,
            action="auth.otp_verified" if ok else "auth.otp_failed",
            obj=user,
            data={"attempt": failures} if failures else {},
            client_address=client_address,
        )
        if locked:
            audit_record(
                actor=user,
                action="auth.otp_locked",
                obj=user,
                data={"attempts": failures},
                client_address=client_address,
            )
    return locked


# --- authentication events (called from django.contrib.auth's signals) ----------


def login_recorded(*, user: User, client_address: str | None) -> None:
    audit_record(actor=user, action="auth.login", obj=user, data={}, client_address=client_address)


def logout_recorded(*, user: User, client_address: str | None) -> None:
    audit_record(actor=user, action="auth.logout", obj=user, data={}, client_address=client_address)


def login_failed_recorded(*, username: str, client_address: str | None, locked_out: bool) -> None:
    # The attempted user name only: never the password, which may be a near miss.
    user = User.objects.filter(username=username).first() if username else None
    data: dict[str, Any] = {"username": username[:150], "locked_out": locked_out}
    if user is not None:
        audit_record(actor=None, action="auth.login_failed", obj=user, data=data, client_address=client_address)
    else:
        audit_record(
            actor=None,
            action="auth.login_failed",
            object_type="accounts.user",
            object_id="(unknown)",
            data=data,
            client_address=client_address,
        )


LOCKOUT_PERMISSION = "accounts.change_user"


def login_lockout_release(
    *, acting_user: User, username: str, ip_address: str, client_address: str | None = None
) -> int:
    """An admin lifts a login lockout: a user name at an address, every name at an
    address (``username`` empty), or a name everywhere (``ip_address`` empty). Audited;
    answers how many lockout records were removed."""
    from axes.utils import reset  # axes' models need the app registry

    if not (acting_user.is_staff and acting_user.has_perm(LOCKOUT_PERMISSION)):
        raise PermissionDenied("only admins can unlock logins")
    username, ip_address = username.strip(), ip_address.strip()
    if not username and not ip_address:
        raise ValidationError("name a user name, an address or both to unlock")
    with transaction.atomic():
        removed = reset(ip=ip_address or None, username=username or None)
        audit_record(
            actor=acting_user,
            action="auth.unlock",
            object_type="axes.accessattempt",
            object_id=f"{username or '*'}@{ip_address or '*'}"[:64],
            data={"username": username[:150], "ip_address": ip_address, "records_removed": removed},
            client_address=client_address,
        )
    return int(removed)


def audit_export_recorded(
    *, acting_user: User, filters: dict[str, str], rows: int, client_address: str | None = None
) -> None:
    """Exporting the trail is itself an audited act (it may reveal who saw which record)."""
    audit_record(
        actor=acting_user,
        action="audit.export",
        object_type="accounts.auditevent",
        object_id="(export)",
        data={"filters": filters, "rows": rows},
        client_address=client_address,
    )


TOKEN_PREFIX = "cw_"  # noqa: S105 - a public prefix that marks the string as a CancerWeb token, not a secret
DEFAULT_TOKEN_DAYS = 30


def hash_token_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _may_revoke_tokens_of(acting_user: User, user: User) -> bool:
    # Admins may revoke anybody's token (a leaked token must be stoppable), never mint one.
    return acting_user.pk == user.pk or acting_user.has_perm("accounts.change_user")


@transaction.atomic
def api_token_create(
    *,
    acting_user: User | None,
    user: User,
    name: str,
    expires_in_days: int = DEFAULT_TOKEN_DAYS,
    client_address: str | None = None,
) -> tuple[ApiToken, str]:
    """Create a token for ``user``; returns the row and the secret, which is shown
    once and never stored. A token is minted only by its own user: a token made by
    somebody else would act, and be audited, under a name that did not make it.
    ``acting_user`` None means an operator on the server's command line."""
    if acting_user is not None and acting_user.pk != user.pk:
        raise PermissionDenied("a token is minted only for oneself")
    if not user.is_active:
        raise ValidationError({"user": ValidationError("the user is inactive", code="user_inactive")})
    if not 1 <= expires_in_days <= settings.API_TOKEN_MAX_DAYS:
        raise ValidationError(
            {
                "expires_in_days": ValidationError(
                    f"a token lives between 1 and {settings.API_TOKEN_MAX_DAYS} days", code="invalid_expiry"
                )
            }
        )
    key = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = timezone.now()
    token = ApiToken(
        user=user,
        name=name.strip(),
        key_prefix=key[:10],
        key_hash=hash_token_key(key),
        created_by=acting_user,
        created_at=now,
        expires_at=now + timedelta(days=expires_in_days),
    )
    token.full_clean()
    token.save()
    audit_record(
        actor=acting_user,
        action="api_token.create",
        obj=token,
        data={"user": str(user.uuid), "name": token.name, "expires_at": token.expires_at.isoformat()},
        client_address=client_address,
    )
    return token, key


@transaction.atomic
def api_token_revoke(*, acting_user: User, token: ApiToken, client_address: str | None = None) -> ApiToken:
    """Revoke a token now. Revoking twice is a no-op that keeps the first time."""
    if not _may_revoke_tokens_of(acting_user, token.user):
        raise PermissionDenied("only admins can revoke other users' tokens")
    token = ApiToken.objects.select_for_update().get(pk=token.pk)
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit_record(
            actor=acting_user,
            action="api_token.revoke",
            obj=token,
            data={"user": str(token.user.uuid)},
            client_address=client_address,
        )
    return token
