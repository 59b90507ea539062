from __future__ import annotations

from typing import Any

from django import forms


class OTPTokenForm(forms.Form):
    token = forms.RegexField(
        label="Code from your authenticator app",
        regex=r"^\d{6,8}$",
        error_messages={"invalid": "Enter the 6-digit code your authenticator shows."},
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}),
    )


class AuditFilterForm(forms.Form):
    action = forms.CharField(required=False, max_length=64, help_text="e.g. review.sign, view, auth.")
    actor = forms.CharField(required=False, max_length=150, label="Actor (user name)")
    object_type = forms.CharField(required=False, max_length=64)
    object_id = forms.CharField(required=False, max_length=64)
    date_from = forms.DateField(required=False, label="From (UTC date)", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To (UTC date)", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return data
