"""Admins manage care units."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ADMIN_PERMISSIONS = ["add_careunit", "change_careunit", "view_careunit"]


def grant(apps, schema_editor):
    # Permissions are normally created after all migrations; make them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name="admin")
    for codename in ADMIN_PERMISSIONS:
        group.permissions.add(Permission.objects.get(content_type__app_label="accounts", codename=codename))


def revoke(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group = Group.objects.filter(name="admin").first()
    if group is not None:
        group.permissions.remove(
            *Permission.objects.filter(content_type__app_label="accounts", codename__in=ADMIN_PERMISSIONS)
        )


class Migration(migrations.Migration):
    dependencies = [("accounts", "0004_i4a_audit_append_only")]

    operations = [migrations.RunPython(grant, revoke)]
