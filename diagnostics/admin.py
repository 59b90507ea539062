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
from diagnostics.models import Exchange, IntegrationAccount, ModelVersion
from diagnostics.selectors.integration import exchanges_recent
from diagnostics.selectors.shadow import shadow_comparison
from diagnostics.services.integration import IntegrationError, exchange_retry, may_operate_integration
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
    # A registered version is a record, never edited: its page shows it read-only, in
    # words (labels listed, figures on the model card), not as raw JSON with Save buttons.
    fields = (
        "name", "version", "task", "status", "stage_labels", "validation_figures", "model_card",
        "calibration", "uncertain_below", "bundle_path", "sha256", "registered_by", "registered_at", "uuid",
    )  # fmt: skip
    readonly_fields = fields
    actions = ["activate_selected", "retire_selected", "candidate_selected", "shadow_backfill_selected"]
    change_list_template = "admin/diagnostics/modelversion/change_list.html"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The list keeps its actions (activate, retire: audited services); one version's
        # page is view-only, so it offers no Save button for data that cannot change.
        if obj is not None:
            return False
        return super().has_change_permission(request, obj)

    @admin.display(description="Stage labels (least to most advanced)")
    def stage_labels(self, obj: ModelVersion) -> str:
        return " → ".join(str(label) for label in obj.labels)

    @admin.display(description="Calibration (applied to the logits at inference)")
    def calibration(self, obj: ModelVersion) -> str:
        from diagnostics.ml.calibration import describe

        return describe((obj.training_summary or {}).get("calibration"), obj.temperature)

    @admin.display(description="Measured figures")
    def validation_figures(self, obj: ModelVersion) -> str:
        split = (obj.metrics or {}).get("split", "")
        figures = (obj.metrics or {}).get(split, {}) if split else {}
        names = ("accuracy", "balanced_accuracy", "roc_auc")
        parts = [f"{n.replace('_', ' ')} {figures[n]:.3f}" for n in names if isinstance(figures.get(n), int | float)]
        if not parts:
            return "—"
        # Bundles with three data roles name the split their figures come from.
        role = ((obj.metrics or {}).get("roles") or {}).get(split)
        if role:
            return f"{split} split ({role}, used for neither training nor selection): " + ", ".join(parts)
        n = figures.get("n")
        return f"{split} split" + (f", n = {n}" if n else "") + ": " + ", ".join(parts)

    @admin.display(description="Model card")
    def model_card(self, obj: ModelVersion) -> str:
        url = reverse("model_card", args=[obj.uuid])
        return format_html('<a href="{}">Model card: every metric, the training summary and the data</a>', url)

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


class _IntegrationOperations:
    """Admins who read the audit trail run the integration; nobody edits an exchange."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return may_operate_integration(request_user(request))

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return may_operate_integration(request_user(request))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Exchange)
class ExchangeAdmin(_IntegrationOperations, admin.ModelAdmin):
    """Inbound and outbound exchanges with the hospital systems, newest first: what was
    received or refused (and why), which signed results were sent, are retrying or
    failed. No clinical data: states, reasons, counts and generated UIDs."""

    list_display = ("created_at", "direction", "channel", "state", "reason", "attempts", "next_attempt_at", "account")
    list_filter = ("direction", "state", "channel")
    # The case and decision are left out: the page is for operators, who see no clinical data.
    exclude = ("case", "decision")
    readonly_fields = [f.name for f in Exchange._meta.fields if f.name not in ("case", "decision")]
    actions = ["retry_selected"]
    list_per_page = 100

    def get_queryset(self, request: HttpRequest) -> QuerySet[Exchange]:
        return exchanges_recent()

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return may_operate_integration(request_user(request))

    @admin.action(description="Send the selected outbound results again now", permissions=["retry"])
    def retry_selected(self, request: HttpRequest, queryset: QuerySet[Exchange]) -> None:
        sent, refused = 0, 0
        for exchange in queryset:
            try:
                exchange_retry(acting_user=request_user(request), exchange=exchange)
                sent += 1
            except IntegrationError:
                refused += 1
        if sent:
            self.message_user(request, f"{sent} result(s) queued to be sent again.")
        if refused:
            self.message_user(
                request,
                f"{refused} exchange(s) skipped: only outbound results not yet sent can be retried.",
                messages.WARNING,
            )


@admin.register(IntegrationAccount)
class IntegrationAccountAdmin(_IntegrationOperations, admin.ModelAdmin):
    """Integration accounts are made with `manage.py integration_account_create` (it
    prints the token once); here they are listed."""

    list_display = ("name", "unit", "task", "ae_titles", "dicomweb_url", "pull_enabled", "active", "created_at")
    readonly_fields = [f.name for f in IntegrationAccount._meta.fields if f.name != "token_hash"]
    exclude = ("token_hash",)
