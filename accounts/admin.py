from typing import Any

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from django.http import HttpRequest

from accounts import services
from accounts.http import request_user
from accounts.models import AuditEvent, CareUnit, User
from core.http import client_address


@admin.register(User)
class AuditedUserAdmin(UserAdmin):
    """Access changes (account state, roles and units, staff and superuser status,
    direct permissions) go through `services.user_access_set`, which enforces who may
    change what and writes the audit events; the form saves only the other fields."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        readonly = list(super().get_readonly_fields(request, obj))
        if not request_user(request).is_superuser:  # the service refuses these too; the form says so early
            readonly += ["is_staff", "is_superuser", "user_permissions"]
        return readonly

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A superuser's account (password included) is a superuser's to change.
        if obj is not None and obj.is_superuser and not request_user(request).is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        # Keep the stored access on the row; save_related applies the form's through the service.
        stored = User.objects.filter(pk=obj.pk).first() if change else None
        for field in ("is_active", "is_staff", "is_superuser"):
            setattr(obj, field, getattr(stored, field) if stored else field == "is_active")
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        for formset in formsets:
            self.save_formset(request, form, formset, change=change)
        user = form.instance
        current = services.UserAccess.of(user)
        data = form.cleaned_data

        def chosen(field: str, now: Any) -> Any:
            return data[field] if field in data and field not in self.get_readonly_fields(request, user) else now

        groups = chosen("groups", None)
        perms = chosen("user_permissions", None)
        wanted = services.UserAccess(
            is_active=chosen("is_active", current.is_active),
            is_staff=chosen("is_staff", current.is_staff),
            is_superuser=chosen("is_superuser", current.is_superuser),
            groups=frozenset(g.name for g in groups) if groups is not None else current.groups,
            permissions=(
                frozenset(f"{p.content_type.app_label}.{p.codename}" for p in perms)
                if perms is not None
                else current.permissions
            ),
        )
        services.user_access_set(
            acting_user=request_user(request), user=user, access=wanted, client_address=client_address(request)
        )


@admin.register(CareUnit)
class CareUnitAdmin(admin.ModelAdmin):
    list_display = ("name", "created_at")
    fields = ("name",)

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        created = services.unit_create(
            acting_user=request_user(request), name=obj.name, client_address=client_address(request)
        )
        obj.pk, obj.group_id, obj.uuid = created.pk, created.group_id, created.uuid

    def has_delete_permission(self, request, obj=None):
        return False  # cases point at their unit for good


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor", "action", "object_type", "object_id")
    list_filter = ("action", "object_type")
    search_fields = ("object_id", "actor__username")

    # Read-only: the audit trail is never edited from the admin.
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
