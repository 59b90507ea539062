from __future__ import annotations

import re
import uuid
from typing import Any

from django import forms
from django.conf import settings
from django.core.validators import RegexValidator

from accounts.models import CareUnit
from diagnostics.intake.validation import accepted_extensions
from diagnostics.models import PATIENT_REF_VALIDATOR, ReviewDecision
from diagnostics.selectors.cases import WorklistFilter


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Django's documented pattern for a field that takes several files."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault(
            "widget", MultipleFileInput(attrs={"accept": ",".join(accepted_extensions()), "multiple": True})
        )
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        single = super().clean
        if isinstance(data, list | tuple):
            if not data and self.required:
                raise forms.ValidationError(self.error_messages["required"], code="required")
            return [single(d, initial) for d in data]
        return [single(data, initial)]


def _choice_field(form: forms.Form, name: str) -> forms.ChoiceField:
    field = form.fields[name]
    assert isinstance(field, forms.ChoiceField)
    return field


class ScanUploadForm(forms.Form):
    files = MultipleFileField(  # type: ignore[assignment]  # a form field, moved to base_fields by the metaclass
        label="Images",
        help_text=f"PNG, JPEG, TIFF or DICOM; up to {settings.UPLOAD_MAX_FILES} files, "
        f"{settings.UPLOAD_MAX_BYTES // (1024 * 1024)} MB each.",
        # Empty files reach the validator so the message names the file.
        allow_empty_file=True,
        error_messages={"required": "Choose at least one image to upload."},
    )


class CaseCreateForm(ScanUploadForm):
    patient_ref = forms.CharField(
        label="Patient reference (pseudonymous)",
        max_length=64,
        validators=[PATIENT_REF_VALIDATOR],
        help_text="Your site's pseudonymous reference, never a name or national ID.",
    )
    body_site = forms.CharField(label="Body site", max_length=100)
    note = forms.CharField(label="Note", required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))
    task = forms.ChoiceField(
        label="Analyse for",
        help_text="The clinical question; only tasks with an active model are listed.",
        error_messages={
            "invalid_choice": "Choose one of the listed tasks; %(value)s has no active model.",
            "required": "Choose the task to analyse for: the images go to that task's model.",
        },
    )

    unit = forms.ModelChoiceField(
        label="Care unit",
        queryset=CareUnit.objects.none(),
        to_field_name="uuid",
        empty_label=None,
        help_text="The unit whose members will see this case.",
    )

    field_order = ["unit", "patient_ref", "body_site", "task", "note", "files"]

    def __init__(self, *args: Any, units: list[CareUnit], tasks: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["unit"]
        field.queryset = CareUnit.objects.filter(pk__in=[u.pk for u in units])  # type: ignore[attr-defined]  # a ModelChoiceField
        if len(units) <= 1:
            # One unit: the case goes there, nothing to choose.
            del self.fields["unit"]
        if len(tasks) == 1:
            _choice_field(self, "task").choices = [(t, t) for t in tasks]
            self.fields["task"].initial = tasks[0]
        else:
            # Several tasks: none is preselected (a browser would show the first one as
            # chosen, and lymph-node patches would go to the breast-ultrasound model
            # unless someone noticed); the user must choose.
            _choice_field(self, "task").choices = [("", "— choose the task —"), *((t, t) for t in tasks)]
        # Nothing to choose with one task (or none yet): the service takes the one task
        # with an active model, or leaves the case waiting for one.
        self.fields["task"].required = len(tasks) > 1


class _SignatureForm(forms.Form):
    """The password (and, where needed, the authenticator code) that signs a decision."""

    password = forms.CharField(widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))
    otp_token = forms.CharField(
        label="Authenticator code", required=False, max_length=8,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
    )  # fmt: skip
    signs = "the decision"

    def __init__(self, *args: Any, otp_required: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["password"].label = f"Password (signs {self.signs})"
        # The code field appears (and is required) only when the signature needs it.
        if otp_required:
            self.fields["otp_token"].required = True
            self.fields["otp_token"].error_messages["required"] = "Enter the code from your authenticator to sign."
        else:
            del self.fields["otp_token"]


class SignForm(_SignatureForm):
    outcome = forms.ChoiceField(choices=ReviewDecision.Outcome.choices, widget=forms.RadioSelect)
    stage = forms.ChoiceField(required=False, label="Your stage (when rejecting)")
    reason = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))
    field_order = ["outcome", "stage", "reason", "password", "otp_token"]

    def __init__(self, *args: Any, labels: list[str], suggestion: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choice_field(self, "stage").choices = [("", "—")] + [(label, label) for label in labels]
        if not suggestion:
            # No AI suggestion to confirm (an input outside the model's training data).
            outcome = _choice_field(self, "outcome")
            outcome.choices = [(ReviewDecision.Outcome.REJECTED, ReviewDecision.Outcome.REJECTED.label)]
            outcome.initial = ReviewDecision.Outcome.REJECTED
            _choice_field(self, "stage").label = "Your stage"

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("outcome") == ReviewDecision.Outcome.REJECTED:
            if not data.get("stage"):
                self.add_error("stage", "A rejection needs your stage.")
            if not (data.get("reason") or "").strip():
                self.add_error("reason", "A rejection needs a reason.")
        return data


class CorrectionForm(_SignatureForm):
    stage = forms.ChoiceField(label="Corrected stage")
    reason = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))
    field_order = ["stage", "reason", "password", "otp_token"]
    signs = "the correction"

    def __init__(self, *args: Any, labels: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choice_field(self, "stage").choices = [(label, label) for label in labels]


# --- worklist filters, blinded reads, review settings -------------------------------


class _WorklistFilterForm(forms.Form):
    """GET filters of a worklist. Invalid values answer 400 with these messages."""

    unit = forms.ChoiceField(required=False, label="Care unit")
    stage = forms.ChoiceField(required=False, label="Stage")
    date_from = forms.DateField(required=False, label="From (date)", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To (date)", widget=forms.DateInput(attrs={"type": "date"}))
    q = forms.CharField(
        required=False,
        max_length=64,
        label="Case reference",
        validators=[
            RegexValidator(r"^[A-Za-z0-9._-]*$", "Search by case reference: letters, digits, dot, dash or underscore.")
        ],
    )
    page = forms.IntegerField(required=False, min_value=1, max_value=100000, label="Page")

    def __init__(self, *args: Any, stages: list[str], units: list[CareUnit] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choice_field(self, "stage").choices = [("", "Any stage")] + [(s, s) for s in stages]
        # Only the user's own units can be chosen; with one unit there is nothing to filter.
        units = units or []
        if len(units) > 1:
            _choice_field(self, "unit").choices = [("", "All my units")] + [(str(u.uuid), u.name) for u in units]
        else:
            del self.fields["unit"]
        self.fields["page"].widget = forms.HiddenInput()

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError("The start date is after the end date.")
        return data

    def worklist_filter(self) -> WorklistFilter:
        data = self.cleaned_data
        return WorklistFilter(
            stage=data["stage"],
            date_from=data["date_from"],
            date_to=data["date_to"],
            search=data["q"],
            unit=data.get("unit") or "",
        )


class CaseFilterForm(_WorklistFilterForm):
    status = forms.ChoiceField(
        required=False,
        label="Status",
        choices=[
            ("", "Any status"),
            ("queued", "Queued"),
            ("running", "Running"),
            ("awaiting_review", "Awaiting review"),
            ("signed", "Signed"),
            ("failed", "Failed"),
        ],
    )
    field_order = ["q", "unit", "status", "stage", "date_from", "date_to", "page"]


class QueueFilterForm(_WorklistFilterForm):
    field_order = ["q", "unit", "stage", "date_from", "date_to", "page"]


class BlindedReadForm(forms.Form):
    stage = forms.ChoiceField(label="Your stage, before the AI's answer", widget=forms.RadioSelect)

    def __init__(self, *args: Any, labels: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _choice_field(self, "stage").choices = [(label, label) for label in labels]


class ReviewerPreferenceForm(forms.Form):
    blinded_first = forms.BooleanField(
        required=False,
        label="Blinded first: record my stage before the AI's answer is shown",
    )


class ReaderStudyForm(forms.Form):
    name = forms.CharField(max_length=200)
    arm = forms.ChoiceField(choices=[], widget=forms.RadioSelect, label="Arm")
    readers: forms.ModelMultipleChoiceField[Any] = forms.ModelMultipleChoiceField(
        queryset=None, label="Readers", help_text="Physicians; at least two. Hold Ctrl to choose several."
    )
    scans = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6}),
        label="Scans",
        help_text="Scan ids, one per line (or separated by spaces or commas). Every reader must be able to see "
        "every scan's case.",
    )
    unit = forms.ModelChoiceField(
        queryset=CareUnit.objects.order_by("name"),
        required=False,
        label="Or: recent scans of a care unit",
        help_text="Instead of ids: the most recent scans with a prediction of this unit's cases (one task).",
    )
    count = forms.IntegerField(min_value=1, max_value=2000, required=False, initial=50, label="How many")

    def __init__(self, *args: Any, physicians: Any, arms: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["readers"].queryset = physicians  # type: ignore[attr-defined]
        _choice_field(self, "arm").choices = arms

    def clean_scans(self) -> list[uuid.UUID]:
        out = []
        for token in re.split(r"[\s,;]+", self.cleaned_data["scans"].strip()):
            if not token:
                continue
            try:
                out.append(uuid.UUID(token))
            except ValueError as exc:
                raise forms.ValidationError(f"{token[:40]!r} is not a scan id") from exc
        return out

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("scans") and not data.get("unit"):
            raise forms.ValidationError("give scan ids, or a care unit to take its recent scans from")
        if data.get("scans") and data.get("unit"):
            raise forms.ValidationError("give scan ids or a care unit, not both")
        if data.get("unit") and not data.get("count"):
            self.add_error("count", "how many scans of the unit?")
        return data


class StudyStageForm(forms.Form):
    scan = forms.UUIDField(widget=forms.HiddenInput)
    stage = forms.ChoiceField(label="Your stage", widget=forms.RadioSelect)

    def __init__(self, *args: Any, labels: list[str], required: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = _choice_field(self, "stage")
        field.choices = ([] if required else [("", "no reference")]) + [(label, label) for label in labels]
        field.required = required
