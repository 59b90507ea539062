"""Model registry in the Django admin: register a bundle folder that lies on the
server under MODEL_DIR, activate or retire versions. Every change goes through the
audited services; versions are never edited or deleted here."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from accounts.http import request_user
from diagnostics.models import ModelVersion
from diagnostics.selectors.shadow import shadow_comparison
from diagnostics.services.model_registry import model_activate, model_make_candidate, model_register, model_retire
from diagnostics.services.shadow import DEFAULT_BACKFILL, shadow_backfill_request


class RegisterBundleForm(forms.Form):
    bundle = forms.CharField(
        label="Bundle folder",
        max_length=500,
        help_text="A folder under the server's model directory holding manifest.json and the model file, "
        "e.g. busi-small-cnn.",
    )
    task = forms.CharField(label="Task (optional)", max_length=200, required=False)
    activate = forms.BooleanField(required=False)
    force_labels = forms.BooleanField(
        required=False, label="Activate even if the labels differ from the task's active version"
    )


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "task", "status", "registered_at", "registered_by", "shadow_link")
    list_filter = ("status", "task")
    readonly_fields = [f.name for f in ModelVersion._meta.fields]
    actions = ["activate_selected", "retire_selected", "candidate_selected", "shadow_backfill_selected"]
    change_list_template = "admin/diagnostics/modelversion/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # registering goes through the bundle form, which checks the hash

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # predictions point at their version forever

    def get_urls(self) -> list[Any]:
        return [
            path("register/", self.admin_site.admin_view(self.register_view), name="diagnostics_modelversion_register"),
            path(
                "<int:pk>/shadow/",
                self.admin_site.admin_view(self.shadow_view),
                name="diagnostics_modelversion_shadow",
            ),
            *super().get_urls(),
        ]

    def register_view(self, request: HttpRequest) -> HttpResponse:
        if not request_user(request).has_perm("diagnostics.add_modelversion"):
            raise PermissionDenied
        form = RegisterBundleForm(request.POST or None)
        status = 200
        if request.method == "POST":
            if form.is_valid():
                try:
                    mv = model_register(
                        acting_user=request_user(request),
                        bundle_dir=form.cleaned_data["bundle"].strip(),
                        activate=form.cleaned_data["activate"],
                        task=form.cleaned_data["task"] or None,
                        force_labels=form.cleaned_data["force_labels"],
                    )
                except ValidationError as exc:
                    form.add_error(None, exc)
                else:
                    self.message_user(request, f"Registered {mv} for task '{mv.task}' ({mv.status}).")
                    return HttpResponseRedirect(reverse("admin:diagnostics_modelversion_changelist"))
            status = 400
        context = {**self.admin_site.each_context(request), "form": form, "title": "Register a model bundle"}
        return TemplateResponse(request, "admin/diagnostics/modelversion/register.html", context, status=status)

    @admin.action(description="Activate the selected version (retires the task's current one)")
    def activate_selected(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to activate.", messages.ERROR)
            return
        try:
            mv = model_activate(acting_user=request_user(request), model_version=queryset.get())
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), messages.ERROR)
            return
        self.message_user(request, f"{mv} is now the active model for '{mv.task}'.")

    @admin.action(description="Retire the selected versions")
    def retire_selected(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        for mv in queryset:
            model_retire(acting_user=request_user(request), model_version=mv)
        self.message_user(request, f"Retired {queryset.count()} version(s).")

    @admin.display(description="Shadow")
    def shadow_link(self, obj: ModelVersion) -> str:
        if obj.status != ModelVersion.Status.CANDIDATE:
            return "-"
        return format_html(
            '<a href="{}">comparison</a>', reverse("admin:diagnostics_modelversion_shadow", args=[obj.pk])
        )

    def shadow_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The candidate against the predictions physicians were shown, on the same
        signed cases: aggregates only, never a case."""
        user = request_user(request)
        if not user.has_perm("diagnostics.change_modelversion"):
            raise PermissionDenied
        model_version = ModelVersion.objects.filter(pk=pk).first()
        if model_version is None:
            from django.http import Http404

            raise Http404("no such model version")
        comparison = shadow_comparison(user=user, model_version=model_version)
        rows = []
        if comparison is not None:
            for label in comparison["labels"]:
                rows.append(
                    {
                        "label": label,
                        "support": comparison["support"][label],
                        "active": comparison["active"]["recall"][label],
                        "candidate": comparison["candidate"]["recall"][label],
                    }
                )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Shadow comparison: {model_version}",
            "model_version": model_version,
            "comparison": comparison,
            "recall_rows": rows,
            "backfill_default": DEFAULT_BACKFILL,
        }
        return TemplateResponse(request, "admin/diagnostics/modelversion/shadow_comparison.html", context)

    @admin.action(description="Run the selected version in shadow (candidate)")
    def candidate_selected(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        for mv in queryset:
            try:
                model_make_candidate(acting_user=request_user(request), model_version=mv)
            except ValidationError as exc:
                self.message_user(request, "; ".join(exc.messages), messages.ERROR)
            else:
                self.message_user(request, f"{mv} now runs in shadow beside the active version of '{mv.task}'.")

    @admin.action(description=f"Run the selected candidate on the last {DEFAULT_BACKFILL} signed cases")
    def shadow_backfill_selected(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        for mv in queryset:
            try:
                shadow_backfill_request(acting_user=request_user(request), model_version=mv)
            except ValidationError as exc:
                self.message_user(request, "; ".join(exc.messages), messages.ERROR)
            else:
                self.message_user(request, f"{mv}: sent to an inference worker; the comparison fills in as it runs.")
