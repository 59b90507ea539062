"""Create the demo's users (one per role) and register the bundled models, one
active per task (lymph-node patches and breast ultrasound).

Refuses to run outside the demo: demo users with published passwords must never
exist on a real installation."""

from __future__ import annotations

import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from accounts import services as account_services
from accounts.models import CareUnit, User
from diagnostics.services.model_registry import model_register

DEMO_UNIT = "Demo pathology unit"

DEMO_USERS = [
    ("clinician", "Clara", "Clinician", "clinician", False),
    ("physician", "Peter", "Physician", "physician", False),
    ("admin", "Ada", "Admin", "admin", True),
]


DEMO_BUNDLES = ["demo-pcam", "busi-small-cnn"]


class Command(BaseCommand):
    help = "Demo only: create one user per role and activate the bundled demo models."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEMO:
            raise CommandError("demo_setup runs only with CANCERWEB_DEMO=1")
        password = demo_password()
        # All demo users share one care unit, so the physician reviews what the clinician uploads.
        unit = CareUnit.objects.filter(name=DEMO_UNIT).first() or account_services.unit_create(
            acting_user=None, name=DEMO_UNIT
        )
        for username, first, last, role, staff in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"first_name": first, "last_name": last}
            )
            if created:
                user.set_password(password)
            # An address of the reserved .invalid domain: the demo's notification
            # e-mails are written to files (bin/demo prints the folder), never sent.
            user.email = user.email or f"{username}@demo.invalid"
            user.is_staff = staff
            user.is_superuser = False
            user.save()
            # The admin sees no clinical data; the others join the unit once (a rerun
            # keeps the membership and records nothing new).
            member = role != "admin" and user.groups.filter(pk=unit.group_id).exists()
            user.groups.set([Group.objects.get(name=role)] + ([unit.group] if member else []))
            if role != "admin" and not member:
                account_services.unit_member_add(acting_user=None, unit=unit, user=user)
        for bundle in DEMO_BUNDLES:
            model_register(acting_user=None, bundle_dir=settings.MODEL_DIR / bundle, activate=True)
        self.stdout.write("demo users and models ready")


def demo_password() -> str:
    """One random password for the demo users, made on first run and kept in the
    demo's data folder, so no installation shares a published password."""
    path = settings.DATA_DIR / "demo_password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(9))
        path.chmod(0o600)
    return path.read_text().strip()
