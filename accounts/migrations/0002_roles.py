"""Create the three role groups with their permissions."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

# Frozen copy of accounts.roles.ROLE_PERMISSIONS (migrations must not import code that
# changes later).
ROLE_PERMISSIONS = {
    "clinician": ["diagnostics.add_case", "diagnostics.add_scan"],
    "physician": ["diagnostics.add_case", "diagnostics.add_scan", "diagnostics.review_prediction"],
    "admin": [
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
    ],
}


def create_roles(apps, schema_editor):
    # Permissions are normally created after all migrations; make them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, perms in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        for dotted in perms:
            app_label, codename = dotted.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def remove_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=ROLE_PERMISSIONS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("diagnostics", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_roles, remove_roles)]
