from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from accounts import services
from accounts.models import AuditEvent, CareUnit, User
from core.http import client_address


@admin.register(User)
class AuditedUserAdmin(UserAdmin):
    """Role and unit changes are permission changes: record them in the audit trail."""

    def save_related(self, request, form, formsets, change):  # type: ignore[no-untyped-def]
        user = form.instance
        old = sorted(user.groups.values_list("name", flat=True)) if change else []
        super().save_related(request, form, formsets, change)
        services.user_groups_changed(
            acting_user=request.user,
            user=user,
            old=old,
            new=sorted(user.groups.values_list("name", flat=True)),
            client_address=client_address(request),
        )


@admin.register(CareUnit)
class CareUnitAdmin(admin.ModelAdmin):
    list_display = ("name", "created_at")
    fields = ("name",)

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        if change:
            super().save_model(request, obj, form, change)
            return
        created = services.unit_create(acting_user=request.user, name=obj.name, client_address=client_address(request))
        obj.pk, obj.group_id, obj.uuid = created.pk, created.group_id, created.uuid

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False  # cases point at their unit for good


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor", "action", "object_type", "object_id")
    list_filter = ("action", "object_type")
    search_fields = ("object_id", "actor__username")

    # Read-only: the audit trail is never edited from the admin.
    def has_add_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
