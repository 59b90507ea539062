"""The three roles and what each may do. Groups carrying these permissions are
created by the data migration accounts/migrations/0002_roles.py."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    CLINICIAN = "clinician"
    PHYSICIAN = "physician"
    ADMIN = "admin"


# app_label.codename, granted to each role's group.
ROLE_PERMISSIONS: dict[Role, list[str]] = {
    Role.CLINICIAN: [
        "diagnostics.add_case",
        "diagnostics.add_scan",
    ],
    Role.PHYSICIAN: [
        "diagnostics.add_case",
        "diagnostics.add_scan",
        "diagnostics.review_prediction",
    ],
    Role.ADMIN: [
        "accounts.add_user",
        "accounts.change_user",
        "accounts.view_user",
        "accounts.view_auditevent",
        "accounts.add_careunit",
        "accounts.change_careunit",
        "accounts.view_careunit",
        "diagnostics.add_modelversion",
        "diagnostics.change_modelversion",
        "diagnostics.view_modelversion",
        "diagnostics.define_reader_study",
    ],
}

UPLOAD_PERMISSION = "diagnostics.add_scan"
REVIEW_PERMISSION = "diagnostics.review_prediction"
# Admins hold it; a superuser may grant it to a lead physician in the user administration.
STUDY_PERMISSION = "diagnostics.define_reader_study"


def ensure_role_groups() -> None:
    """Create the role groups with their permissions if missing (the migration does
    this on a new database; tests that flush tables call it again)."""
    from django.contrib.auth.models import Group, Permission

    for role, perms in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role.value)
        for dotted in perms:
            app_label, codename = dotted.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
