from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from diagnostics.models import PATIENT_REF_VALIDATOR, ReviewDecision
from diagnostics.validation import accepted_extensions


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


class ScanUploadForm(forms.Form):
    files = MultipleFileField(
        label="Images",
        help_text=f"PNG, JPEG or TIFF; up to {settings.UPLOAD_MAX_FILES} files, "
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
        error_messages={"invalid_choice": "Choose one of the listed tasks; %(value)s has no active model."},
    )

    field_order = ["patient_ref", "body_site", "task", "note", "files"]

    def __init__(self, *args: Any, tasks: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["task"].choices = [(t, t) for t in tasks]
        if len(tasks) == 1:
            self.fields["task"].initial = tasks[0]
        # Nothing to choose with one task (or none yet): the service takes the one task
        # with an active model, or leaves the case waiting for one.
        self.fields["task"].required = len(tasks) > 1


class SignForm(forms.Form):
    outcome = forms.ChoiceField(choices=ReviewDecision.Outcome.choices, widget=forms.RadioSelect)
    stage = forms.ChoiceField(required=False, label="Your stage (when rejecting)")
    reason = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))
    password = forms.CharField(
        label="Password (signs the decision)", widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )

    def __init__(self, *args: Any, labels: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["stage"].choices = [("", "—")] + [(label, label) for label in labels]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("outcome") == ReviewDecision.Outcome.REJECTED:
            if not data.get("stage"):
                self.add_error("stage", "A rejection needs your stage.")
            if not (data.get("reason") or "").strip():
                self.add_error("reason", "A rejection needs a reason.")
        return data


class CorrectionForm(forms.Form):
    stage = forms.ChoiceField(label="Corrected stage")
    reason = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))
    password = forms.CharField(
        label="Password (signs the correction)", widget=forms.PasswordInput(attrs={"autocomplete": "current-password"})
    )

    def __init__(self, *args: Any, labels: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["stage"].choices = [(label, label) for label in labels]
