"""Access changes made in the Django admin go through the audited service: every change
of roles, units, staff or superuser status and direct permissions is a permission.*
event, and only a superuser may grant staff or superuser status."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.urls import reverse

from accounts import services
from accounts.models import AuditEvent, User
from tests.factories import UserFactory
from tests.helpers import login

pytestmark = pytest.mark.django_db


def _form(user: User, **changes: Any) -> dict[str, Any]:
    """The admin's user change form as the browser posts it, with ``changes`` applied."""
    data: dict[str, Any] = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": "on" if user.is_active else "",
        "is_staff": "on" if user.is_staff else "",
        "is_superuser": "on" if user.is_superuser else "",
        "groups": [str(g.pk) for g in user.groups.all()],
        "user_permissions": [],
        "last_login_0": "",
        "last_login_1": "",
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v != ""}


@pytest.fixture
def superuser(db: None) -> User:
    return UserFactory(username="root", is_staff=True, is_superuser=True)


def test_a_non_superuser_admin_cannot_grant_superuser_or_staff(admin_user, clinician):
    url = reverse("admin:accounts_user_change", args=[clinician.pk])
    response = login(admin_user).post(url, _form(clinician, is_superuser="on", is_staff="on"))
    assert response.status_code in (200, 302)
    clinician.refresh_from_db()
    assert not clinician.is_superuser and not clinician.is_staff  # the fields are read-only for them
    with pytest.raises(PermissionDenied, match="only a superuser"):
        services.user_access_set(
            acting_user=admin_user,
            user=clinician,
            access=replace(services.UserAccess.of(clinician), is_superuser=True),
        )
    clinician.refresh_from_db()
    assert not clinician.is_superuser
    assert not AuditEvent.objects.filter(action="permission.flags_change").exists()


def test_ticking_staff_in_the_admin_is_an_audited_permission_change(superuser, clinician):
    url = reverse("admin:accounts_user_change", args=[clinician.pk])
    response = login(superuser).post(url, _form(clinician, is_staff="on"))
    assert response.status_code == 302
    clinician.refresh_from_db()
    assert clinician.is_staff
    event = AuditEvent.objects.get(action="permission.flags_change", object_id=str(clinician.uuid))
    assert event.actor == superuser
    assert event.data == {"old": {"is_staff": False}, "new": {"is_staff": True}}


def test_role_and_unit_changes_in_the_admin_are_audited(admin_user, clinician, care_unit):
    physician_role = Group.objects.get(name="physician")
    url = reverse("admin:accounts_user_change", args=[clinician.pk])
    groups = [str(g.pk) for g in clinician.groups.all()] + [str(physician_role.pk)]
    assert login(admin_user).post(url, _form(clinician, groups=groups)).status_code == 302
    event = AuditEvent.objects.get(action="permission.groups_change", object_id=str(clinician.uuid))
    assert event.actor == admin_user
    assert "physician" in event.data["new"]["groups"] and "physician" not in event.data["old"]["groups"]


def test_nobody_changes_their_own_access(admin_user):
    url = reverse("admin:accounts_user_change", args=[admin_user.pk])
    physician_role = Group.objects.get(name="physician")
    groups = [str(g.pk) for g in admin_user.groups.all()] + [str(physician_role.pk)]
    response = login(admin_user).post(url, _form(admin_user, groups=groups))
    assert response.status_code == 403
    assert not admin_user.groups.filter(name="physician").exists()


def test_a_non_superuser_admin_cannot_edit_a_superuser(admin_user, superuser):
    url = reverse("admin:accounts_user_change", args=[superuser.pk])
    client = login(admin_user)
    response = client.post(url, _form(superuser, first_name="Mallory"))
    assert response.status_code == 403
    superuser.refresh_from_db()
    assert superuser.first_name != "Mallory"
